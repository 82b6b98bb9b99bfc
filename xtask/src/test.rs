//! `cargo xtask test [-- ARGS...]`: setup, then every test of the workspace, then (without
//! ARGS) every fuzz target for 10 s.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{cmd, runner, setup, workspace_root};

/// Workspace members that only build for the BPF target (the agent's build script builds them);
/// a host `cargo test --workspace` must leave them out.
const BPF_ONLY: &[&str] = &["dt-ebpf"];

/// Default test-harness threads: kernel tests are heavy, and the machines have two cores.
const TEST_THREADS: &str = "--test-threads=2";

/// Seconds per fuzz target after the tests (`DT_FUZZ_SECONDS` overrides; 0 skips the fuzzing).
const FUZZ_SECONDS: u64 = 10;

pub fn test(args: &[String]) -> Result<()> {
    setup::setup()?;
    let root = workspace_root()?;
    // After the tests, every fuzz target for a little while (only for the whole suite, not a
    // selection).
    let seconds = match std::env::var("DT_FUZZ_SECONDS") {
        Ok(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("DT_FUZZ_SECONDS={s:?} is not a number of seconds"))?,
        Err(_) => FUZZ_SECONDS,
    };
    // Kernel tests fail instead of skipping when they cannot run, so CI never skips silently.
    let require = cfg!(target_os = "linux") && cmd::is_root();
    if !args.is_empty() {
        // A selection: `cargo test` itself, with the selection's arguments.
        let mut command = test_command(&root, args);
        if require {
            command.env("DT_REQUIRE_KERNEL_TESTS", "1");
        }
        return cmd::run(&mut command);
    }
    // The whole suite: built first, then its binaries run (runner.rs).
    let mut build = test_command(
        &root,
        &[
            "--no-run".into(),
            "--message-format=json-render-diagnostics".into(),
        ],
    );
    // `output` would capture stderr too: cargo's progress and the compiler's diagnostics go to
    // the terminal, only the JSON messages are read.
    build
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    eprintln!("+ {}", cmd::display(&build));
    let built = build
        .output()
        .context("could not start `cargo test --no-run`")?;
    if !built.status.success() {
        anyhow::bail!("building the tests failed ({})", built.status);
    }
    let bins = runner::binaries_in(&String::from_utf8_lossy(&built.stdout))?;
    let envs: &[(&str, &str)] = if require {
        &[("DT_REQUIRE_KERNEL_TESTS", "1")]
    } else {
        &[]
    };
    let logs = root.join("target").join("xtask-test");
    if seconds == 0 {
        return runner::run_all(bins, &[TEST_THREADS], envs, &logs);
    }
    // The fuzz targets build while the tests run (much of a kernel test's time is waiting),
    // instead of after them.
    let (mut build, log) = crate::fuzz::spawn_build()?;
    let tested = runner::run_all(bins, &[TEST_THREADS], envs, &logs);
    if tested.is_err() {
        // No fuzzing follows failed tests: the build is stopped, not waited for.
        crate::fuzz::stop_build(&mut build);
    }
    let built = build.wait();
    crate::fuzz::build_ended();
    tested?;
    let built = built.context("waiting for the fuzz targets' build")?;
    if !built.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("{text}");
        anyhow::bail!("building the fuzz targets failed ({built}); its output is above");
    }
    crate::fuzz::fuzz(seconds, None)
}

/// `cargo test` for the workspace with ARGS, run in `root`.
fn test_command(root: &Path, args: &[String]) -> Command {
    // ARGS before a `--` go to cargo, the rest to the test harness.
    let (cargo_args, harness_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let selects_packages = cargo_args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2));

    let mut command = cmd::new("cargo");
    command.arg("test");
    if !selects_packages {
        command.arg("--workspace");
        for pkg in BPF_ONLY {
            command.args(["--exclude", pkg]);
        }
    }
    command.arg("--all-targets").args(cargo_args).arg("--");
    if !harness_args.iter().any(|a| a.starts_with("--test-threads")) {
        command.arg(TEST_THREADS);
    }
    command.args(harness_args).current_dir(root);
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Task};
    use clap::Parser;

    fn line(argv: &[&str]) -> String {
        let cli = Cli::try_parse_from(argv).unwrap();
        let Task::Test { args } = cli.task else {
            panic!("not the test task")
        };
        let c = test_command(Path::new("/ws"), &args);
        cmd::display(&c)
    }

    #[test]
    fn plain() {
        assert_eq!(
            line(&["xtask", "test"]),
            "cargo test --workspace --exclude dt-ebpf --all-targets -- --test-threads=2"
        );
    }

    #[test]
    fn cargo_and_harness_args() {
        assert_eq!(
            line(&[
                "xtask",
                "test",
                "--",
                "-p",
                "dt-agent",
                "--",
                "rules::",
                "--nocapture"
            ]),
            "cargo test --all-targets -p dt-agent -- --test-threads=2 rules:: --nocapture"
        );
        assert_eq!(
            line(&["xtask", "test", "--", "walk", "--", "--test-threads=1"]),
            "cargo test --workspace --exclude dt-ebpf --all-targets walk -- --test-threads=1"
        );
    }

    #[test]
    fn hyphen_args_without_separator() {
        assert_eq!(
            line(&["xtask", "test", "--release"]),
            "cargo test --workspace --exclude dt-ebpf --all-targets --release -- --test-threads=2"
        );
    }
}
