//! The per-call overhead of a counted uprobe: a small C program calling syslog(3) in a loop, timed
//! without an agent and with an agent whose rule set has the syslog preset and one count rule.
//!
//! Whether the agent in hand has uprobe hooks is found out by asking
//! `dt-agent check` about the probe rule file; when it refuses it, the result says so and points
//! at the uprobe tests, and nothing is measured.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::procs::Agent;
use crate::report::Stat;

/// The probe rule file (the syslog preset, counted by one rule).
const PROBE_RULES: &str = r#"# dt-bench: count every syslog(3) call.
[[probe]]
name = "syslog"
preset = "syslog"

[[rule]]
name = "count-syslog"
action = "count"
hooks = ["uprobe:syslog"]
"#;

/// syslog(3) in a loop. The mask lets only LOG_ERR and above through, so an INFO call returns
/// inside glibc at once (no socket, no formatting): what is left is the call itself, and the
/// probe's cost stands out. Prints ns per call.
const PROGRAM: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <time.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    openlog("dt-bench", 0, LOG_USER);
    setlogmask(LOG_UPTO(LOG_ERR));
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        syslog(LOG_INFO, "dt-bench message %ld", i);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n);
    return 0;
}
"#;

const CALLS: u64 = 200_000;
const REPEATS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct UprobeResult {
    /// "measured", "unsupported", "skipped" or "failed".
    pub status: String,
    pub detail: String,
    pub ns_per_call_plain: Option<Stat>,
    pub ns_per_call_probed: Option<Stat>,
    pub overhead_ns_per_call: Option<f64>,
    /// The count rule's `matched` after the probed runs.
    pub counted: Option<u64>,
    pub calls_probed: Option<u64>,
}

impl UprobeResult {
    fn status(status: &str, detail: String) -> UprobeResult {
        UprobeResult {
            status: status.into(),
            detail,
            ns_per_call_plain: None,
            ns_per_call_probed: None,
            overhead_ns_per_call: None,
            counted: None,
            calls_probed: None,
        }
    }

    pub fn skipped(why: &str) -> UprobeResult {
        Self::status("skipped", why.into())
    }

    pub fn summary(&self) -> String {
        match (self.status.as_str(), self.overhead_ns_per_call) {
            ("measured", Some(o)) => format!(
                "{o:.0} ns per call: syslog() {:.1} ns/call unprobed, {:.1} ns/call with a counting \
                 rule (medians of {REPEATS} × {CALLS} calls; counted {} of {} calls)",
                self.ns_per_call_plain.map_or(0.0, |s| s.median),
                self.ns_per_call_probed.map_or(0.0, |s| s.median),
                self.counted.unwrap_or(0),
                self.calls_probed.unwrap_or(0),
            ),
            ("not clean", Some(o)) => format!(
                "not measured cleanly: {o:.0} ns per call added ({:.1} → {:.1} ns/call), but {}",
                self.ns_per_call_plain.map_or(0.0, |s| s.median),
                self.ns_per_call_probed.map_or(0.0, |s| s.median),
                self.detail
            ),
            _ => format!("see the uprobe tests ({}: {})", self.status, self.detail),
        }
    }
}

fn run_loop(bin: &Path) -> Result<f64, String> {
    let o = Command::new(bin)
        .arg(CALLS.to_string())
        .output()
        .map_err(|e| format!("run {}: {e}", bin.display()))?;
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("{} printed {:?}", bin.display(), o.stdout))
}

/// Uprobes other processes hold on libc, as "pid PID (COMM): OFFSET" (from the fdinfo of their
/// BPF links). Uprobes on one address share one breakpoint trap, so with any of them in place
/// the "unprobed" loop is not unprobed, and a second probe only adds its program's cost.
fn foreign_libc_uprobes() -> Vec<String> {
    let mut out = Vec::new();
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let is_link = std::fs::read_link(fd.path())
                .map(|t| t.to_string_lossy() == "anon_inode:bpf_link")
                .unwrap_or(false);
            if !is_link {
                continue;
            }
            let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim_start_matches(':').trim().to_string())
            };
            if field("event_type").as_deref() == Some("uprobe")
                && field("name").is_some_and(|n| n.contains("libc"))
            {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                out.push(format!(
                    "pid {pid} ({}): {}",
                    comm.trim(),
                    field("offset").unwrap_or_default()
                ));
            }
        }
    }
    out
}

pub fn measure(agent_bin: &Path, work: &Path) -> UprobeResult {
    match try_measure(agent_bin, work) {
        Ok(r) => r,
        Err(e) => UprobeResult::status("failed", e),
    }
}

fn try_measure(agent_bin: &Path, work: &Path) -> Result<UprobeResult, String> {
    let err = |e: std::io::Error| e.to_string();
    let dir = work.join("rules-uprobe");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(err)?;
    std::fs::write(dir.join("syslog.toml"), PROBE_RULES).map_err(err)?;
    let check = Command::new(agent_bin)
        .arg("check")
        .arg(&dir)
        .output()
        .map_err(err)?;
    if !check.status.success() {
        let msg = String::from_utf8_lossy(&check.stderr);
        let first = msg.lines().next().unwrap_or("").trim().to_string();
        return Ok(UprobeResult::status(
            "unsupported",
            format!("this dt-agent refuses [[probe]]: {first}"),
        ));
    }
    let src = work.join("syslog_loop.c");
    let bin = work.join("syslog_loop");
    std::fs::write(&src, PROGRAM).map_err(err)?;
    let cc = Command::new("cc")
        .args(["-O2", "-U_FORTIFY_SOURCE", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !cc.status.success() {
        return Err(format!("cc: {}", String::from_utf8_lossy(&cc.stderr)));
    }
    let foreign = foreign_libc_uprobes();
    let mut plain = Vec::new();
    for _ in 0..REPEATS {
        plain.push(run_loop(&bin)?);
    }
    // The port is never used: only the probe matters here.
    let agent = Agent::start(agent_bin, work, &dir, 9, 262_144).map_err(|e| format!("{e:#}"))?;
    let mut probed = Vec::new();
    for _ in 0..REPEATS {
        probed.push(run_loop(&bin)?);
    }
    let stats = agent.stats().map_err(|e| format!("{e:#}"))?;
    agent.stop().map_err(|e| format!("{e:#}"))?;
    let counted = stats["rules"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == "count-syslog"))
        .and_then(|r| r["matched"].as_u64());
    let (p, q) = (Stat::of(&plain).unwrap(), Stat::of(&probed).unwrap());
    let (status, detail) = if foreign.is_empty() {
        (
            "measured",
            "syslog(LOG_INFO, ...) with setlogmask(LOG_UPTO(LOG_ERR)), gcc -O2".to_string(),
        )
    } else {
        (
            "not clean",
            format!(
                "other processes held uprobes on libc during the unprobed runs ({}), so both \
                 loops took the breakpoint trap and the difference is only the added program",
                foreign.join(", ")
            ),
        )
    };
    Ok(UprobeResult {
        status: status.into(),
        detail,
        ns_per_call_plain: Some(p),
        ns_per_call_probed: Some(q),
        overhead_ns_per_call: Some(q.median - p.median),
        counted,
        calls_probed: Some(CALLS * REPEATS as u64),
    })
}
