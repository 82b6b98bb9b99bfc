//! `cargo xtask fuzz [--seconds N] [--targets A,B]`: every fuzz target of `fuzz/` (cargo-fuzz,
//! libFuzzer) for N seconds each, one after the other; non-zero exit on any finding.
//!
//! Each target starts from its kept inputs (`fuzz/seeds/<target>/`, committed, and the
//! reproducers of fixed findings in `fuzz/regressions/<target>/`) and grows a working corpus in
//! `fuzz/corpus/<target>/` (not committed). A finding is left in `fuzz/artifacts/<target>/`;
//! the summary names it and how to replay it. Each run is appended to
//! `target/fuzz/runs.jsonl` (date, target, seconds, inputs, inputs per second, corpus size,
//! result), from which FUZZING.md records the runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup, workspace_root};

/// The cargo-fuzz release setup installs (verified with nightly on this machine kind).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The targets, in the order they run (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: &[&str] = &[
    "walk_differential",
    "walk_bytes",
    "http_head",
    "chunked",
    "rules_parse",
    "config_parse",
];

/// Installs cargo-fuzz when it is missing (idempotent).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let installed = cmd::find_in_path("cargo-fuzz").is_some_and(|p| {
        cmd::stdout(cmd::new(p).arg("--version")).is_ok_and(|v| v.contains(CARGO_FUZZ_VERSION))
    });
    if installed {
        println!("ok        cargo-fuzz {CARGO_FUZZ_VERSION}");
        return Ok(());
    }
    cmd::run(
        cmd::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .current_dir(std::env::temp_dir()),
    )?;
    println!("installed cargo-fuzz {CARGO_FUZZ_VERSION}");
    Ok(())
}

/// One target's run.
struct Run {
    target: String,
    ok: bool,
    inputs: u64,
    per_second: u64,
    corpus: usize,
    seconds: f64,
    finding: Option<String>,
}

pub fn fuzz(seconds: u64, only: Option<&[String]>) -> Result<()> {
    setup::setup()?;
    ensure_cargo_fuzz()?;
    let root = workspace_root()?;
    let fuzz_dir = root.join("fuzz");
    let targets: Vec<String> = match only {
        Some(list) => {
            for t in list {
                if !TARGETS.contains(&t.as_str()) {
                    bail!(
                        "no fuzz target {t:?}; the targets are {}",
                        TARGETS.join(", ")
                    );
                }
            }
            list.to_vec()
        }
        None => TARGETS.iter().map(|t| t.to_string()).collect(),
    };
    // One build of every target first, so each run's seconds are fuzzing, not compiling.
    cmd::run(&mut cargo_fuzz(&fuzz_dir, "build"))?;
    let mut runs = Vec::new();
    for t in &targets {
        runs.push(run_target(&fuzz_dir, t, seconds)?);
    }
    let log = root.join("target/fuzz/runs.jsonl");
    std::fs::create_dir_all(log.parent().unwrap())?;
    let date = cmd::stdout(cmd::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut lines = String::new();
    println!("\n| target | seconds | inputs | inputs/s | corpus | result |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} |",
            r.target,
            r.seconds,
            r.inputs,
            r.per_second,
            r.corpus,
            r.finding.as_deref().unwrap_or("no finding")
        );
        lines.push_str(&format!(
            "{{\"date\":\"{date}\",\"target\":\"{}\",\"seconds\":{:.0},\"inputs\":{},\"per_second\":{},\"corpus\":{},\"finding\":{}}}\n",
            r.target,
            r.seconds,
            r.inputs,
            r.per_second,
            r.corpus,
            r.finding
                .as_ref()
                .map_or("null".to_string(), |f| format!("{f:?}"))
        ));
    }
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(lines.as_bytes()))
        .with_context(|| format!("appending to {}", log.display()))?;
    let failed: Vec<&Run> = runs.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        bail!(
            "{} fuzz target(s) found something: {}",
            failed.len(),
            failed
                .iter()
                .map(|r| format!(
                    "{} ({})",
                    r.target,
                    r.finding.as_deref().unwrap_or("see above")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND --fuzz-dir fuzz -s none`: no sanitizer (the code under
/// test is safe Rust; panics, overflow checks and debug assertions are what find bugs here, and
/// the inputs per second are several times higher).
/// Starts the build of every fuzz target in the background (its own target directory, so it
/// does not wait for the workspace's), its output in `target/fuzz/build.log`: `cargo xtask test`
/// builds them while its tests run, and [`fuzz`]'s own build then has nothing left to do.
pub fn spawn_build() -> Result<(std::process::Child, PathBuf)> {
    ensure_cargo_fuzz()?;
    let root = workspace_root()?;
    let log = root.join("target/fuzz/build.log");
    std::fs::create_dir_all(log.parent().unwrap())?;
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut c = cargo_fuzz(&root.join("fuzz"), "build");
    eprintln!(
        "+ {} (in the background, to {})",
        cmd::display(&c),
        log.display()
    );
    // A process group of its own, so that `stop_build` stops `cargo fuzz`'s own `cargo build`
    // too, not only `cargo fuzz`. Out of the terminal's foreground group, it does not get a
    // Ctrl-C: xtask passes SIGINT and SIGTERM on to it.
    let child = std::os::unix::process::CommandExt::process_group(&mut c, 0)
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting the fuzz targets' build")?;
    BUILD_GROUP.store(child.id() as i32, Ordering::SeqCst);
    // SAFETY: installs a handler that only reads an atomic and calls kill, signal and raise,
    // which are async-signal-safe.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    Ok((child, log))
}

/// The process group of the running background build, or 0.
static BUILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// SIGINT or SIGTERM while a background build runs: stop its group, then die of the signal.
extern "C" fn on_signal(sig: libc::c_int) {
    let group = BUILD_GROUP.load(Ordering::SeqCst);
    // SAFETY: async-signal-safe calls only.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGTERM);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Stops a build [`spawn_build`] started, with every process it started.
pub fn stop_build(build: &mut std::process::Child) {
    BUILD_GROUP.store(0, Ordering::SeqCst);
    // SAFETY: a signal to the build's own process group (its pid, as `process_group(0)` made
    // it); no memory is involved.
    unsafe {
        libc::kill(-(build.id() as libc::pid_t), libc::SIGTERM);
    }
    let _ = build.kill();
}

/// A background build that has ended: nothing to stop any more on a signal.
pub fn build_ended() {
    BUILD_GROUP.store(0, Ordering::SeqCst);
}

fn cargo_fuzz(fuzz_dir: &Path, subcommand: &str) -> std::process::Command {
    let mut c = cmd::new("cargo");
    c.args(["+nightly", "fuzz", subcommand, "--fuzz-dir"])
        .arg(fuzz_dir)
        .args(["-s", "none"])
        .current_dir(fuzz_dir);
    c
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<Run> {
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let mut inputs_dirs: Vec<PathBuf> = vec![corpus.clone()];
    for kept in ["seeds", "regressions"] {
        let d = fuzz_dir.join(kept).join(target);
        if d.is_dir() {
            inputs_dirs.push(d);
        }
    }
    println!("fuzzing {target} for {seconds} s");
    let started = Instant::now();
    let out = cargo_fuzz(fuzz_dir, "run")
        .arg(target)
        .args(&inputs_dirs)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=20", "-rss_limit_mb=4096"])
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running cargo fuzz for {target}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    let stat = |name: &str| -> u64 {
        err.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let finding = (!out.status.success()).then(|| {
        err.lines()
            .find(|l| l.contains("Test unit written to"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| format!("exit {}", out.status))
    });
    if finding.is_some() {
        // The whole story: the panic message, the input, how to replay.
        eprintln!("{err}");
    }
    Ok(Run {
        target: target.to_string(),
        ok: out.status.success(),
        inputs: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        corpus: std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
        seconds: elapsed,
        finding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_are_the_files_of_fuzz_targets() {
        let dir = workspace_root().unwrap().join("fuzz/fuzz_targets");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                Some(p.file_stem()?.to_string_lossy().into_owned())
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }
}
