//! `cargo xtask run [-- ARGS...]`: setup, build the agent, and run it on the workspace's rules.

use anyhow::{Result, bail};

use crate::{cmd, setup, workspace_root};

/// Runs setup and builds `dt-agent` in release: the workspace root and the binary's path.
pub fn release_agent() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    setup::setup()?;
    let root = workspace_root()?;
    cmd::run(
        cmd::new("cargo")
            .args(["build", "--release", "-p", "dt-agent"])
            .current_dir(&root),
    )?;
    let agent = root.join("target/release/dt-agent");
    if !agent.is_file() {
        bail!("{} is missing after the build", agent.display());
    }
    Ok((root, agent))
}

pub fn run(args: &[String]) -> Result<()> {
    let (root, agent) = release_agent()?;
    let mut command = cmd::new(&agent);
    command
        .arg("run")
        .arg("--rules")
        .arg(root.join("rules"))
        .args(args)
        .current_dir(&root);
    let line = cmd::display(&command);
    eprintln!("+ {line}");

    // Replace this process with the agent: Ctrl-C (SIGINT) and SIGTERM then reach the agent
    // itself, which detaches cleanly, and its exit status is ours.
    use std::os::unix::process::CommandExt;
    let err = command.exec();
    bail!("could not exec `{line}`: {err}")
}
