//! Driving the in-process agent and the `dt-agent` binary, and checking its counters.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dt_agent::{Agent, AgentConfig, Stats};

use crate::model::{Action, Expected};
use crate::rules::TempRules;

/// The default request bound (README, "Limits": 256 KiB).
pub const DEFAULT_MAX_REQUEST: u32 = dt_ebpf_common::layout::DEFAULT_MAX_REQUEST;

/// A config hooking `ports`, on the root cgroup, with the default bound.
pub fn agent_config(rules: &TempRules, ports: &[u16]) -> AgentConfig {
    AgentConfig {
        rules_dir: rules.path().to_path_buf(),
        ports: ports.to_vec(),
        cgroup: None,
        max_request: DEFAULT_MAX_REQUEST,
        pin_root: None,
        capture_endpoint: None,
        remote_rules: Vec::new(),
        memory_ceiling: None,
        captures_per_second: None,
        uprobe_fault_in: false,
    }
}

/// Starts an agent for `rules` hooking `ports`; panics with the whole error chain.
pub fn start_agent(rules: &TempRules, ports: &[u16]) -> Agent {
    start_agent_with(agent_config(rules, ports))
}

pub fn start_agent_with(cfg: AgentConfig) -> Agent {
    match Agent::start(cfg.clone()) {
        Ok(a) => a,
        Err(e) => panic!("Agent::start({cfg:?}) failed: {e:#}"),
    }
}

/// The agent's counters; panics on error.
pub fn stats_of(agent: &Agent) -> Stats {
    agent
        .stats()
        .unwrap_or_else(|e| panic!("Agent::stats failed: {e:#}"))
}

/// Every passthrough reason reads 0.
pub fn assert_no_passthrough(stats: &Stats) {
    let nonzero: Vec<_> = stats
        .totals
        .passthrough
        .iter()
        .filter(|(_, v)| **v != 0)
        .collect();
    assert!(
        nonzero.is_empty(),
        "passthrough counters must all be 0, got {nonzero:?} (totals {:?})",
        stats.totals
    );
}

/// Only `reason` is non-zero among the passthrough counters, and it reads `n`.
pub fn assert_passthrough_only(stats: &Stats, reason: &str, n: u64) {
    let got = stats.totals.passthrough.get(reason).copied();
    assert_eq!(
        got,
        Some(n),
        "passthrough.{reason} (all: {:?})",
        stats.totals.passthrough
    );
    let others: Vec<_> = stats
        .totals
        .passthrough
        .iter()
        .filter(|(k, v)| k.as_str() != reason && **v != 0)
        .collect();
    assert!(
        others.is_empty(),
        "other passthrough reasons moved: {others:?}"
    );
}

/// Per-rule `matched` and `dropped` exactly as the model says (not the bytes: where the test
/// decodes and re-encodes what a client sent, length prefixes may differ), `what` naming the
/// case.
pub fn assert_matched_dropped(what: &str, stats: &Stats, expected: &Expected) {
    for r in &expected.rules {
        let got = stats
            .rule(&r.name)
            .unwrap_or_else(|| panic!("{what}: rule {} not listed", r.name));
        assert_eq!(
            (got.matched, got.dropped),
            (r.matched, r.dropped),
            "{what}: {}",
            r.name
        );
    }
}

/// Per-rule `matched`, `dropped`, `dropped_bytes` (and `kept == 0` for drop rules), and the
/// totals `records` and `records_dropped`, all exactly as the model says.
pub fn assert_expected(stats: &Stats, expected: &Expected) {
    let mut problems = Vec::new();
    for want in &expected.rules {
        let Some(got) = stats.rule(&want.name) else {
            problems.push(format!("rule {} not listed", want.name));
            continue;
        };
        if got.matched != want.matched {
            problems.push(format!(
                "rule {}: matched {} want {}",
                want.name, got.matched, want.matched
            ));
        }
        if got.dropped != want.dropped {
            problems.push(format!(
                "rule {}: dropped {} want {}",
                want.name, got.dropped, want.dropped
            ));
        }
        if got.dropped_bytes != want.dropped_bytes {
            problems.push(format!(
                "rule {}: dropped_bytes {} want {}",
                want.name, got.dropped_bytes, want.dropped_bytes
            ));
        }
        if want.action == Some(Action::Drop) && got.kept != 0 {
            problems.push(format!("rule {}: kept {} want 0", want.name, got.kept));
        }
        if let Some(a) = &want.action
            && got.action != a.as_str()
        {
            problems.push(format!(
                "rule {}: action {:?} want {:?}",
                want.name,
                got.action,
                a.as_str()
            ));
        }
        if !got.active {
            problems.push(format!("rule {}: not active", want.name));
        }
    }
    if stats.totals.records != expected.records {
        problems.push(format!(
            "totals.records {} want {}",
            stats.totals.records, expected.records
        ));
    }
    if stats.totals.records_dropped != expected.records_dropped {
        problems.push(format!(
            "totals.records_dropped {} want {}",
            stats.totals.records_dropped, expected.records_dropped
        ));
    }
    assert!(
        problems.is_empty(),
        "counters differ from the model:\n  {}\nstats: {stats:#?}",
        problems.join("\n  ")
    );
}

/// The `dt-agent` binary next to this test executable: `<target>/<profile>/dt-agent`
/// (test executables live in `<target>/<profile>/deps/`). Cargo builds it for the dt-agent
/// package's integration tests (`cargo test --workspace`) or `cargo build -p dt-agent`.
/// Panics when it is missing or older than the sources it is built from (a stale binary would
/// test old code). `DT_AGENT_BIN` overrides the path (and the staleness check).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DT_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("dt-agent{}", std::env::consts::EXE_SUFFIX));
    let hint = "it is built by `cargo test --workspace` when dt-agent has integration tests, or by \
                `cargo build -p dt-agent`; DT_AGENT_BIN overrides the path";
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("the dt-agent binary is not at {} ({hint})", bin.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest = None;
    for src in [
        "dt-agent/src",
        "dt-agent/build.rs",
        "dt-agent/Cargo.toml",
        "dt-ebpf/src",
        "dt-ebpf-common/src",
    ] {
        newest_mtime(&root.join(src), &mut newest);
    }
    if let Some((t, path)) = newest {
        assert!(
            built >= t,
            "the dt-agent binary at {} is older than {} ({hint})",
            bin.display(),
            path.display()
        );
    }
    bin
}

fn newest_mtime(p: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(meta) = std::fs::metadata(p) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                newest_mtime(&e.path(), newest);
            }
        }
    } else if let Ok(t) = meta.modified()
        && newest.as_ref().is_none_or(|(n, _)| t > *n)
    {
        *newest = Some((t, p.to_path_buf()));
    }
}
