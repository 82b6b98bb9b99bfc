//! `cargo xtask bench [-- ARGS...]`: setup, build the agent and the bench in release, and run
//! every benchmark scenario (`dt-bench run`, see BENCHMARKS.md). The Markdown report goes to
//! stdout, the raw figures to `target/bench/results.json`; ARGS go to `dt-bench run`, e.g.
//! `cargo xtask bench -- --rounds 5 --duration 2`.

use std::io::Write;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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
        match stdout_to_stderr(|| collector(&root)) {
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

/// Rotel, the OpenTelemetry collector of scenario (l), pinned: its PyPI wheel carries the
/// `rotel-agent` binary (with the Python logs processor, linked to CPython 3.11). The
/// OpenTelemetry Collector itself is not on any registry this machine kind reaches.
const COLLECTOR_PACKAGE: &str = "rotel==0.0.1a15";
const COLLECTOR_VENV: &str = "target/bench/collector-venv";

/// The collector's binary, installed into its own venv the first time.
fn collector(root: &Path) -> Result<PathBuf> {
    let venv = root.join(COLLECTOR_VENV);
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(venv.join("lib"))
            .ok()?
            .flatten()
            .map(|d| d.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.is_file())
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    let _ = std::fs::remove_dir_all(&venv);
    cmd::run(cmd::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("creating the collector's venv")?;
    cmd::run(
        cmd::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--only-binary=:all:", COLLECTOR_PACKAGE]),
    )
    .with_context(|| format!("installing {COLLECTOR_PACKAGE} (needs PyPI)"))?;
    let bin = find().context("no rotel/rotel-agent in the installed package")?;
    Ok(bin)
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
