//! The whole suite's test binaries, [`JOBS`] at a time.
//!
//! `cargo test --no-run` builds them; they run [`JOBS`] at a time (each with its own harness
//! threads), the longest first, each one's output printed whole when it ends with its wall and
//! CPU time, and every binary runs even when one fails. Most of a kernel test's time is the
//! kernel verifying `dt_msg` at each agent start, CPU of one core in bursts between waits, so two
//! at a time (`DT_TEST_JOBS=2`) halve a run of the tests alone. The tests are written to share
//! the machine: every agent, port, pin directory, cgroup and network namespace is a test's own.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Test binaries run at once (`DT_TEST_JOBS` overrides). One: in a full `cargo xtask test`
/// the fuzz targets' build takes the core a second binary would have, so two at a time gained
/// nothing there, and it made the machine busier than the tests' timings were written for (two
/// tests raced, once each, in the first runs). `DT_TEST_JOBS=2` halves a run of the tests alone.
pub const JOBS: usize = 1;

/// Binaries started first, the longest first, so that no long one starts last and runs alone
/// (the rest follow in cargo's order). Only an order: a name here that no longer exists is
/// ignored.
const LONGEST_FIRST: &[&str] = &[
    "uprobe",
    "operator",
    "opamp",
    "recorder",
    "node_exporter",
    "drain",
    "passthrough",
    "fuzz_regressions",
    "ceiling",
    "http_path",
    "python_exporter",
    "metrics",
];

/// One test binary of the build.
#[derive(Debug, Clone, PartialEq)]
pub struct TestBinary {
    /// As cargo names it when it runs it: `unittests src/lib.rs`, `tests/uprobe.rs`.
    pub label: String,
    /// The target's name (`uprobe`, `dt_agent`).
    pub name: String,
    pub package: String,
    /// The package's directory: cargo runs a test binary there.
    pub dir: PathBuf,
    pub exe: PathBuf,
}

/// The test binaries in cargo's `--message-format=json-render-diagnostics` output (one JSON
/// object a line; the diagnostics go to stderr as usual): the artifacts built with the test
/// profile that have an executable.
pub fn binaries_in(json_lines: &str) -> Result<Vec<TestBinary>> {
    let mut out = Vec::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo's JSON line {line:?}"))?;
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let manifest = v["manifest_path"]
            .as_str()
            .context("a compiler-artifact without manifest_path")?;
        let dir = Path::new(manifest)
            .parent()
            .context("manifest_path has no directory")?
            .to_path_buf();
        let target = &v["target"];
        let name = target["name"].as_str().unwrap_or("?").to_string();
        let src = target["src_path"].as_str().unwrap_or("?");
        let src = Path::new(src)
            .strip_prefix(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| src.to_string());
        let kinds: Vec<&str> = target["kind"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .collect();
        let label = if kinds.contains(&"test") {
            src
        } else {
            format!("unittests {src}")
        };
        let package = package_name(v["package_id"].as_str().unwrap_or(""));
        out.push(TestBinary {
            label,
            name,
            package,
            dir,
            exe: PathBuf::from(exe),
        });
    }
    Ok(out)
}

/// The package's name in a cargo package id: `path+file:///ws/tests#dt-tests@0.1.0`,
/// `path+file:///ws/dt-agent#0.1.0` (the directory's name when it is the package's), or the
/// older `dt-tests 0.1.0 (path+file:///ws/tests)`.
fn package_name(id: &str) -> String {
    match id.rsplit_once('#') {
        Some((_, frag)) if frag.contains('@') => frag.split('@').next().unwrap_or(frag),
        Some((url, _)) => url.rsplit('/').next().unwrap_or(url),
        None => id.split(' ').next().unwrap_or(id),
    }
    .to_string()
}

/// `bins` in the order they start: [`LONGEST_FIRST`], then the rest as given.
pub fn start_order(mut bins: Vec<TestBinary>) -> Vec<TestBinary> {
    let rank = |b: &TestBinary| {
        LONGEST_FIRST
            .iter()
            .position(|n| *n == b.name && b.label.starts_with("tests/"))
            .unwrap_or(LONGEST_FIRST.len())
    };
    bins.sort_by_key(rank);
    bins
}

/// The totals of a binary's `test result: ok. 5 passed; 0 failed; 1 ignored; …` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

pub fn tally(output: &str) -> Tally {
    let mut t = Tally::default();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => t.passed += n,
                "failed" => t.failed += n,
                "ignored" => t.ignored += n,
                _ => {}
            }
        }
    }
    t
}

struct Ran {
    bin: TestBinary,
    status: Result<ExitStatus>,
    took: Duration,
    /// User and system CPU of the binary and the processes it waited for (its agents).
    cpu: Duration,
    output: String,
}

/// Runs `bins` [`JOBS`] at a time (or `DT_TEST_JOBS`) with `args` and `envs`, in `logs`; prints
/// each one's output whole when it ends, then the totals. Every binary runs, whatever the
/// others did; fails when any failed.
pub fn run_all(
    bins: Vec<TestBinary>,
    args: &[&str],
    envs: &[(&str, &str)],
    logs: &Path,
) -> Result<()> {
    let jobs = match std::env::var("DT_TEST_JOBS") {
        Ok(s) => s
            .parse::<usize>()
            .ok()
            .filter(|j| *j > 0)
            .with_context(|| format!("DT_TEST_JOBS={s:?} is not a number of jobs"))?,
        Err(_) => JOBS,
    };
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let total = bins.len();
    eprintln!(
        "running {total} test binaries, {jobs} at a time, each with {}",
        args.join(" ")
    );
    let t0 = Instant::now();
    let queue = Arc::new(Mutex::new(VecDeque::from(start_order(bins))));
    let (tx, rx) = mpsc::channel::<Ran>();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let (queue, tx, args, envs, logs) = (
            queue.clone(),
            tx.clone(),
            args.clone(),
            envs.clone(),
            logs.to_path_buf(),
        );
        workers.push(std::thread::spawn(move || {
            loop {
                let Some(bin) = queue.lock().unwrap().pop_front() else {
                    return;
                };
                let ran = run_one(bin, &args, &envs, &logs);
                if tx.send(ran).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut sum = Tally::default();
    let mut cpu = Duration::ZERO;
    let mut failed = Vec::new();
    for (i, ran) in rx.iter().enumerate() {
        println!(
            "     Running {} ({}) [{}/{total}, {:.1} s, CPU {:.1} s]",
            ran.bin.label,
            ran.bin.exe.display(),
            i + 1,
            ran.took.as_secs_f64(),
            ran.cpu.as_secs_f64()
        );
        cpu += ran.cpu;
        print!("{}", ran.output);
        let t = tally(&ran.output);
        sum.passed += t.passed;
        sum.failed += t.failed;
        sum.ignored += t.ignored;
        match &ran.status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                println!("error: {} failed ({s})", ran.bin.label);
                failed.push(format!("{} ({})", ran.bin.label, ran.bin.package));
            }
            Err(e) => {
                println!("error: {}: {e:#}", ran.bin.label);
                failed.push(format!("{} ({})", ran.bin.label, ran.bin.package));
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
    println!(
        "\n{total} test binaries in {:.0} s (CPU {:.0} s): {} passed; {} failed; {} ignored",
        t0.elapsed().as_secs_f64(),
        cpu.as_secs_f64(),
        sum.passed,
        sum.failed,
        sum.ignored
    );
    if !failed.is_empty() {
        bail!(
            "{} test binaries failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn run_one(bin: TestBinary, args: &[String], envs: &[(String, String)], logs: &Path) -> Ran {
    let t0 = Instant::now();
    let log = logs.join(format!(
        "{}-{}.log",
        bin.package,
        bin.exe.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut cpu = Duration::ZERO;
    let status = (|| {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut c = Command::new(&bin.exe);
        c.args(args)
            .current_dir(&bin.dir)
            // What cargo sets for a test binary that a test may read at run time.
            .env("CARGO_MANIFEST_DIR", &bin.dir)
            .env("CARGO_PKG_NAME", &bin.package)
            .env("PATH", cmd::tool_path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c
            .spawn()
            .with_context(|| format!("could not start {}", bin.exe.display()))?;
        let (status, used) = wait_with_cpu(child)?;
        cpu = used;
        Ok(status)
    })();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    Ran {
        bin,
        status,
        took: t0.elapsed(),
        cpu,
        output,
    }
}

/// Waits for `child`; its exit status and the CPU it and the children it waited for used.
fn wait_with_cpu(child: std::process::Child) -> Result<(ExitStatus, Duration)> {
    use std::os::unix::process::ExitStatusExt as _;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our child, whose handle is not waited for elsewhere.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for a test binary");
        }
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((
        ExitStatus::from_raw(status),
        tv(ru.ru_utime) + tv(ru.ru_stime),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///ws/tests#dt-tests@0.1.0","manifest_path":"/ws/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"uprobe","src_path":"/ws/tests/tests/uprobe.rs"},"profile":{"test":true},"executable":"/ws/target/debug/deps/uprobe-1"}
{"reason":"compiler-artifact","package_id":"path+file:///ws/dt-agent#0.1.0","manifest_path":"/ws/dt-agent/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"dt_agent","src_path":"/ws/dt-agent/src/lib.rs"},"profile":{"test":true},"executable":"/ws/target/debug/deps/dt_agent-2"}
{"reason":"compiler-artifact","package_id":"path+file:///ws/dt-agent#0.1.0","manifest_path":"/ws/dt-agent/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"dt_agent","src_path":"/ws/dt-agent/src/lib.rs"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","package_id":"path+file:///ws/dt-agent#0.1.0","manifest_path":"/ws/dt-agent/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"dt-agent","src_path":"/ws/dt-agent/src/main.rs"},"profile":{"test":false},"executable":"/ws/target/debug/dt-agent"}
{"reason":"build-finished","success":true}"#;
        let bins = binaries_in(json).unwrap();
        assert_eq!(bins.len(), 2, "{bins:?}");
        assert_eq!(bins[0].label, "tests/uprobe.rs");
        assert_eq!(bins[0].package, "dt-tests");
        assert_eq!(bins[0].dir, Path::new("/ws/tests"));
        assert_eq!(bins[1].label, "unittests src/lib.rs");
        assert_eq!(bins[1].package, "dt-agent");
        assert_eq!(
            package_name("dt-tests 0.1.0 (path+file:///ws/tests)"),
            "dt-tests"
        );
        // The longest first, the rest as given.
        let order = start_order(vec![bins[1].clone(), bins[0].clone()]);
        assert_eq!(order[0].name, "uprobe");
    }

    #[test]
    fn tallies_result_lines() {
        let t = tally(
            "test a ... ok\ntest result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; \
             0 filtered out; finished in 1.0s\n\ntest result: FAILED. 2 passed; 3 failed; 0 \
             ignored; 0 measured; 0 filtered out; finished in 2.0s\n",
        );
        assert_eq!(
            t,
            Tally {
                passed: 7,
                failed: 3,
                ignored: 1
            }
        );
    }
}
