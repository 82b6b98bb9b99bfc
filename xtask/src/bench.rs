//! `cargo xtask bench [-- ARGS...]`: setup, build the agent and the bench in release, and run
//! every benchmark scenario (`dt-bench run`, see BENCHMARKS.md). The Markdown report goes to
//! stdout, the raw figures to `target/bench/results.json`; ARGS go to `dt-bench run`, e.g.
//! `cargo xtask bench -- --rounds 5 --duration 2`.

use std::io::Write;

use anyhow::{Result, bail};

use crate::{cmd, setup, workspace_root};

pub fn bench(args: &[String]) -> Result<()> {
    // Setup reports on stdout; keep stdout for the report alone.
    stdout_to_stderr(setup::setup)?;
    if !cmd::is_root() {
        bail!("the bench starts dt-agent, which attaches eBPF programs: run it as root");
    }
    let root = workspace_root()?;
    cmd::run(
        cmd::new("cargo")
            .args(["build", "--release", "-p", "dt-agent", "-p", "dt-bench"])
            .current_dir(&root),
    )?;
    let mut command = cmd::new(root.join("target/release/dt-bench"));
    command
        .arg("run")
        .arg("--agent")
        .arg(root.join("target/release/dt-agent"));
    if !args
        .iter()
        .any(|a| a == "--collector" || a.starts_with("--collector="))
    {
        // Scenario (l)'s collector; without it the bench leaves (l) out and says why.
        match setup::collector_bin() {
            Ok(bin) => {
                command.arg("--collector").arg(bin);
            }
            Err(e) => eprintln!("the collector of scenario (l) is not available: {e:#}"),
        }
    }
    if !args.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
        command
            .arg("--out")
            .arg(root.join("target/bench/results.json"));
    }
    command.args(args).current_dir(&root);
    cmd::run(&mut command)
}

/// Runs `f` with file descriptor 1 pointing at stderr.
fn stdout_to_stderr<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _ = std::io::stdout().flush();
    // SAFETY: dup/dup2/close on the process's own standard descriptors; fd 1 is restored below.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 {
        return f();
    }
    // SAFETY: as above.
    unsafe { libc::dup2(2, 1) };
    let r = f();
    let _ = std::io::stdout().flush();
    // SAFETY: as above; `saved` is ours and closed once.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    r
}
