//! The metric families: the agent's counters ([`Stats`]) as the named, labelled series both
//! outputs carry (the table is in [`crate::export`]).

use std::sync::Arc;

use crate::stats::{RecorderStats, RuleStats, Stats, TotalStats, UprobeStats};

/// Where the exporters read the counters from, typically the running service's `stats()`. It is called
/// on a blocking thread (`tokio::task::spawn_blocking`), so it may take a lock.
pub type StatsSource = Arc<dyn Fn() -> anyhow::Result<Stats> + Send + Sync>;

/// Counter (monotonic, cumulative) or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// Since when a counter counts: the counters the kernel keeps (in pinned maps, carried on by an
/// agent that adopts them) or this agent's own, which start again at 0 when it restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Since {
    Pins,
    Agent,
}

/// One metric family, in both namings.
#[derive(Debug)]
pub(crate) struct Family {
    /// Prometheus name (counters end in `_total`).
    pub prometheus: &'static str,
    /// OTLP name.
    pub otel: &'static str,
    pub kind: Kind,
    /// For counters: since when they count (the OTLP start time).
    pub since: Since,
    /// UCUM unit for OTLP (`By`, or an `{annotation}`).
    pub unit: &'static str,
    pub help: &'static str,
}

const fn counter(
    prometheus: &'static str,
    otel: &'static str,
    unit: &'static str,
    help: &'static str,
) -> Family {
    Family {
        prometheus,
        otel,
        kind: Kind::Counter,
        since: Since::Pins,
        unit,
        help,
    }
}

/// A counter the agent keeps in its own memory: it starts again at 0 when the agent restarts,
/// pins or not.
const fn agent_counter(
    prometheus: &'static str,
    otel: &'static str,
    unit: &'static str,
    help: &'static str,
) -> Family {
    Family {
        since: Since::Agent,
        ..counter(prometheus, otel, unit, help)
    }
}

const fn gauge(
    prometheus: &'static str,
    otel: &'static str,
    unit: &'static str,
    help: &'static str,
) -> Family {
    Family {
        prometheus,
        otel,
        kind: Kind::Gauge,
        since: Since::Pins,
        unit,
        help,
    }
}

/// A family and how to read its value.
pub(crate) type Reader<T> = (Family, fn(&T) -> u64);

/// Per-rule counters, labelled `rule`, `action`, `hook`, `active`.
pub(crate) const RULE_FAMILIES: [Reader<RuleStats>; 5] = [
    (
        counter(
            "dt_rule_matched_total",
            "dt.rule.matched",
            "{record}",
            "Log records the rule's match held for (rules after a stopping rule are not evaluated).",
        ),
        |r| r.matched,
    ),
    (
        counter(
            "dt_rule_kept_total",
            "dt.rule.kept",
            "{record}",
            "Matched log records the rule kept (sample and rate_limit rules).",
        ),
        |r| r.kept,
    ),
    (
        counter(
            "dt_rule_dropped_total",
            "dt.rule.dropped",
            "{record}",
            "Log records the rule dropped in the kernel.",
        ),
        |r| r.dropped,
    ),
    (
        counter(
            "dt_rule_dropped_bytes_total",
            "dt.rule.dropped_bytes",
            "By",
            "Bytes of the log records the rule dropped (each record's whole encoding: tag, length prefix and body).",
        ),
        |r| r.dropped_bytes,
    ),
    (
        counter(
            "dt_rule_redacted_total",
            "dt.rule.redacted",
            "{record}",
            "Kept log records the rule's redaction was applied to.",
        ),
        |r| r.redacted,
    ),
];

/// Whole-path counters, without labels.
pub(crate) const TOTAL_FAMILIES: [Reader<TotalStats>; 10] = [
    (
        counter(
            "dt_connections_total",
            "dt.connections",
            "{connection}",
            "TCP connections hooked (to a configured OTLP/HTTP port).",
        ),
        |t| t.connections,
    ),
    (
        counter(
            "dt_requests_total",
            "dt.requests",
            "{request}",
            "HTTP requests on hooked connections.",
        ),
        |t| t.requests,
    ),
    (
        counter(
            "dt_log_requests_total",
            "dt.log_requests",
            "{request}",
            "HTTP requests walked as OTLP /v1/logs.",
        ),
        |t| t.log_requests,
    ),
    (
        counter(
            "dt_records_total",
            "dt.records",
            "{record}",
            "Log records walked.",
        ),
        |t| t.records,
    ),
    (
        counter(
            "dt_records_dropped_total",
            "dt.records.dropped",
            "{record}",
            "Log records dropped in the kernel, by any rule.",
        ),
        |t| t.records_dropped,
    ),
    (
        counter(
            "dt_bytes_in_total",
            "dt.bytes.in",
            "By",
            "HTTP bytes of requests on hooked connections before the kernel's edits, headers included.",
        ),
        |t| t.bytes_in,
    ),
    (
        counter(
            "dt_bytes_out_total",
            "dt.bytes.out",
            "By",
            "HTTP bytes of requests on hooked connections after the kernel's edits, headers included.",
        ),
        |t| t.bytes_out,
    ),
    (
        counter(
            "dt_edit_failures_total",
            "dt.edit_failures",
            "{record}",
            "Edits the kernel could not make: a record removal refused (out of memory; those records were kept and not counted as dropped), or an [enrich] insert that did not fit (that ResourceLogs went without).",
        ),
        |t| t.edit_failures,
    ),
    (
        counter(
            "dt_untracked_bytes_total",
            "dt.untracked_bytes",
            "By",
            "Bytes sent on hooked connections after the kernel stopped following them (chunked or bad HTTP).",
        ),
        |t| t.untracked_bytes,
    ),
    (
        counter(
            "dt_released_total",
            "dt.released",
            "{request}",
            "Held requests whose connection closed before the rest of them was sent (they never left).",
        ),
        |t| t.released,
    ),
];

/// Requests that left byte-for-byte untouched, labelled `reason`.
pub(crate) const PASSTHROUGH: Family = counter(
    "dt_passthrough_total",
    "dt.passthrough",
    "{request}",
    "Requests that left byte-for-byte untouched, by reason.",
);

/// Gauges, without labels.
pub(crate) const GAUGES: [Reader<Stats>; 5] = [
    (
        gauge(
            "dt_generation",
            "dt.generation",
            "{generation}",
            "Generation of the active rule set.",
        ),
        |s| s.generation,
    ),
    (
        gauge(
            "dt_enabled",
            "dt.enabled",
            "{state}",
            "1 while rules are evaluated, 0 while disabled (every request passes untouched).",
        ),
        |s| s.enabled as u64,
    ),
    (
        gauge(
            "dt_requests_in_flight",
            "dt.requests.in_flight",
            "{request}",
            "Requests held in the kernel right now, waiting for the rest of their bytes.",
        ),
        |s| s.totals.in_flight,
    ),
    (
        gauge(
            "dt_requests_in_flight_longest_ms",
            "dt.requests.in_flight.longest_ms",
            "{ms}",
            "How long the request held longest right now has been held, in milliseconds (0 when none is): a sender that never sends the rest of a request holds it until its connection closes.",
        ),
        |s| s.totals.in_flight_longest_ms,
    ),
    (
        gauge(
            "dt_rules_refused",
            "dt.rules.refused",
            "{state}",
            "1 while the last change of the rule set stands refused (an invalid edit of the rules directory, a remote config that did not apply: the previous set is active; stats --json says why in rules_error), else 0.",
        ),
        |s| s.rules_error.is_some() as u64,
    ),
];

/// Per-recorder values, labelled `recorder`.
pub(crate) const RECORDER_FAMILIES: [Reader<RecorderStats>; 9] = [
    (
        gauge(
            "dt_recorder_records",
            "dt.recorder.records",
            "{record}",
            "Records the flight recorder holds now.",
        ),
        |r| r.records,
    ),
    (
        gauge(
            "dt_recorder_bytes",
            "dt.recorder.bytes",
            "By",
            "Ring bytes the recorder's records take now.",
        ),
        |r| r.bytes,
    ),
    (
        counter(
            "dt_recorder_overwritten_total",
            "dt.recorder.overwritten",
            "{record}",
            "Records overwritten by newer ones before they were flushed.",
        ),
        |r| r.overwritten,
    ),
    (
        counter(
            "dt_recorder_too_long_total",
            "dt.recorder.too_long",
            "{record}",
            "Records longer than max_record, not recorded.",
        ),
        |r| r.too_long,
    ),
    (
        counter(
            "dt_recorder_flushes_total",
            "dt.recorder.flushes",
            "{flush}",
            "Flushes of the recorder done.",
        ),
        |r| r.flushes,
    ),
    (
        counter(
            "dt_recorder_flushed_records_total",
            "dt.recorder.flushed_records",
            "{record}",
            "Records egressed by flushes.",
        ),
        |r| r.flushed_records,
    ),
    (
        counter(
            "dt_recorder_flush_failures_total",
            "dt.recorder.flush_failures",
            "{flush}",
            "Flushes given up after every try failed (their records stayed in the recorder).",
        ),
        |r| r.flush_failures,
    ),
    (
        counter(
            "dt_recorder_lost_total",
            "dt.recorder.lost",
            "{record}",
            "Records not recorded for another reason (a redact rule matched them, the recorder just removed, a message unreadable).",
        ),
        |r| r.lost,
    ),
    (
        counter(
            "dt_recorder_recorded_total",
            "dt.recorder.recorded",
            "{record}",
            "Records written into the recorder in all.",
        ),
        |r| r.recorded,
    ),
];

/// The uprobe hook's counters, without labels.
pub(crate) const UPROBE_FAMILIES: [Reader<UprobeStats>; 13] = [
    (
        gauge(
            "dt_uprobe_attached",
            "dt.uprobe.attached",
            "{function}",
            "Functions the uprobe hook is attached to now.",
        ),
        |u| u.attached,
    ),
    (
        gauge(
            "dt_uprobe_detaching",
            "dt.uprobe.detaching",
            "{function}",
            "Functions removed from the rule set whose detach the kernel has not finished (it waits while a probed call waits for a page of its message: uprobe_fault_in).",
        ),
        |u| u.detaching,
    ),
    (
        counter(
            "dt_uprobe_calls_total",
            "dt.uprobe.calls",
            "{call}",
            "Application calls of probed functions evaluated against the rules.",
        ),
        |u| u.calls,
    ),
    (
        counter(
            "dt_uprobe_nested_total",
            "dt.uprobe.nested",
            "{call}",
            "Calls a probed library made into its own probed functions, not evaluated again.",
        ),
        |u| u.nested,
    ),
    (
        counter(
            "dt_uprobe_unreadable_total",
            "dt.uprobe.unreadable",
            "{call}",
            "Calls whose message could not be read.",
        ),
        |u| u.unreadable,
    ),
    (
        agent_counter(
            "dt_uprobe_pages_faulted_in_total",
            "dt.uprobe.pages_faulted_in",
            "{page}",
            "Message pages the probe faulted in (pages the calling process had not touched yet). Since the agent started (it restarts at 0).",
        ),
        |u| u.pages_faulted_in,
    ),
    (
        agent_counter(
            "dt_uprobe_preempted_total",
            "dt.uprobe.preempted",
            "{call}",
            "Calls not evaluated: they came while another call's evaluation on their CPU was preempted (preempt=full or lazy kernels). Since the agent started (it restarts at 0).",
        ),
        |u| u.preempted,
    ),
    (
        counter(
            "dt_uprobe_truncated_total",
            "dt.uprobe.truncated",
            "{call}",
            "Calls whose message was cut at the bound.",
        ),
        |u| u.truncated,
    ),
    (
        counter(
            "dt_uprobe_captured_total",
            "dt.uprobe.captured",
            "{call}",
            "Calls capture rules sent into the ring buffer.",
        ),
        |u| u.captured,
    ),
    (
        counter(
            "dt_uprobe_capture_lost_total",
            "dt.uprobe.capture_lost",
            "{call}",
            "Calls capture rules matched that the full ring buffer refused.",
        ),
        |u| u.capture_lost,
    ),
    (
        agent_counter(
            "dt_uprobe_capture_throttled_total",
            "dt.uprobe.capture_throttled",
            "{call}",
            "Captured calls not exported: the captures-per-second ceiling was reached. Since the agent started (it restarts at 0).",
        ),
        |u| u.capture_throttled,
    ),
    (
        agent_counter(
            "dt_uprobe_exported_total",
            "dt.uprobe.exported",
            "{call}",
            "Captured calls exported as OTLP log records. Since the agent started (it restarts at 0).",
        ),
        |u| u.exported,
    ),
    (
        agent_counter(
            "dt_uprobe_export_failed_total",
            "dt.uprobe.export_failed",
            "{call}",
            "Captured calls in exports that failed. Since the agent started (it restarts at 0).",
        ),
        |u| u.export_failed,
    ),
];

/// Firings of trigger rules, labelled like the rule families.
pub(crate) const FIRED: Family = counter(
    "dt_rule_fired_total",
    "dt.rule.fired",
    "{firing}",
    "Firings of the trigger rule.",
);

/// Matches of count rules with `group_by`, by group value: labelled like the rule families
/// and `group`. A rule's series add up to its `dt_rule_matched_total`.
pub(crate) const GROUP_MATCHED: Family = counter(
    "dt_rule_group_matched_total",
    "dt.rule.group.matched",
    "{record}",
    "Log records the grouped count rule matched, by group value (__other__: past max_groups; __missing__: no value).",
);

/// States, labelled `state`: 1 while on.
pub(crate) const STATE_ON: Family = gauge(
    "dt_state_on",
    "dt.state.on",
    "{state}",
    "1 while the state is on, 0 while off.",
);

/// While evaluation is off: 1, labelled with why as a token of [`DISABLED_REASONS`] (`reason`,
/// `stats`' `disabled_cause`). The words and figures stay in `stats`' `disabled_reason`:
/// as a label value they would make a new series at every trip, which no alert can name.
pub(crate) const DISABLED_INFO: Family = gauge(
    "dt_disabled_info",
    "dt.disabled.info",
    "{info}",
    "1 while dt is disabled, labelled with why: reason is ceiling (the cost ceiling was exceeded), disable (the rip cord pulled by hand), stopping (the agent drains before it detaches), uninstall_cut_short (an adopted rip cord an uninstall left pulled) or unknown; stats --json disabled_reason has the details.",
);

/// Every value of `dt_disabled_info`'s `reason` label (what [`disabled_token`] gives).
pub(crate) const DISABLED_REASONS: [&str; 5] = [
    "ceiling",
    "disable",
    "stopping",
    "uninstall_cut_short",
    "unknown",
];

/// The `reason` label of `dt_disabled_info`: `stats`' `disabled_cause`, one of
/// [`DISABLED_REASONS`] (`unknown` for a word this agent does not know, as from stats of
/// another version).
pub(crate) fn disabled_token(cause: Option<&str>) -> &'static str {
    DISABLED_REASONS
        .iter()
        .copied()
        .find(|&w| Some(w) == cause)
        .unwrap_or("unknown")
}

/// The cost ceiling's last measurement (`[ceiling]`; no series without one).
pub(crate) const COST_FAMILIES: [Reader<crate::stats::CostStats>; 4] = [
    (
        gauge(
            "dt_kernel_cpu_ppm",
            "dt.kernel.cpu.ppm",
            "{ppm}",
            "CPU time of dt's kernel programs over the last window, in millionths of all CPUs' time (10000 is 1%).",
        ),
        |c| c.cpu_ppm,
    ),
    (
        gauge(
            "dt_kernel_cpu_ceiling_ppm",
            "dt.kernel.cpu.ceiling.ppm",
            "{ppm}",
            "The CPU ceiling, in millionths of all CPUs' time.",
        ),
        |c| c.cpu_ceiling_ppm,
    ),
    (
        agent_counter(
            "dt_ceiling_exceeded_total",
            "dt.ceiling.exceeded",
            "{window}",
            "Windows over the CPU ceiling (each pulled the rip cord). Since the agent started (it restarts at 0).",
        ),
        |c| c.exceeded,
    ),
    (
        gauge(
            "dt_maps_bytes",
            "dt.maps.bytes",
            "By",
            "Kernel memory of dt's BPF maps, recorders included.",
        ),
        |c| c.map_bytes,
    ),
];

/// One labelled value.
#[derive(Debug)]
pub(crate) struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

/// Every family with its samples, in exposition order. Families with no samples (no rules, no
/// passthrough reasons) are still listed.
pub(crate) fn families(stats: &Stats) -> Vec<(&'static Family, Vec<Sample>)> {
    let mut out = Vec::new();
    for (family, value) in &RULE_FAMILIES {
        let samples = stats
            .rules
            .iter()
            .map(|r| Sample {
                labels: rule_labels(r),
                value: value(r),
            })
            .collect();
        out.push((family, samples));
    }
    for (family, value) in &TOTAL_FAMILIES {
        out.push((
            family,
            vec![Sample {
                labels: Vec::new(),
                value: value(&stats.totals),
            }],
        ));
    }
    let passthrough = stats
        .totals
        .passthrough
        .iter()
        .map(|(reason, n)| Sample {
            labels: vec![("reason", reason.clone())],
            value: *n,
        })
        .collect();
    out.push((&PASSTHROUGH, passthrough));
    let fired = stats
        .rules
        .iter()
        .filter_map(|r| {
            r.fired.map(|n| Sample {
                labels: rule_labels(r),
                value: n,
            })
        })
        .collect();
    out.push((&FIRED, fired));
    let grouped = stats
        .rules
        .iter()
        .flat_map(|r| {
            r.groups.iter().flatten().map(|(group, n)| {
                let mut labels = rule_labels(r);
                labels.push(("group", group.clone()));
                Sample { labels, value: *n }
            })
        })
        .collect();
    out.push((&GROUP_MATCHED, grouped));
    for (family, value) in &RECORDER_FAMILIES {
        let samples = stats
            .recorders
            .iter()
            .map(|r| Sample {
                labels: vec![("recorder", r.name.clone())],
                value: value(r),
            })
            .collect();
        out.push((family, samples));
    }
    for (family, value) in &UPROBE_FAMILIES {
        out.push((
            family,
            vec![Sample {
                labels: Vec::new(),
                value: value(&stats.uprobes),
            }],
        ));
    }
    let states = stats
        .states
        .iter()
        .map(|s| Sample {
            labels: vec![("state", s.name.clone())],
            value: s.on as u64,
        })
        .collect();
    out.push((&STATE_ON, states));
    let disabled = stats
        .disabled_reason
        .iter()
        .map(|_| Sample {
            labels: vec![(
                "reason",
                disabled_token(stats.disabled_cause.as_deref()).to_string(),
            )],
            value: 1,
        })
        .collect();
    out.push((&DISABLED_INFO, disabled));
    for (family, value) in &COST_FAMILIES {
        let samples = stats
            .cost
            .iter()
            .map(|c| Sample {
                labels: Vec::new(),
                value: value(c),
            })
            .collect();
        out.push((family, samples));
    }
    for (family, value) in &GAUGES {
        out.push((
            family,
            vec![Sample {
                labels: Vec::new(),
                value: value(stats),
            }],
        ));
    }
    out
}

fn rule_labels(r: &RuleStats) -> Vec<(&'static str, String)> {
    vec![
        ("rule", r.name.clone()),
        ("action", r.action.clone()),
        ("hook", r.hook.clone()),
        ("active", r.active.to_string()),
    ]
}

/// Reads `source` on a blocking thread (it may wait for the agent's lock).
pub(crate) async fn read_stats(source: &StatsSource) -> anyhow::Result<Stats> {
    let source = source.clone();
    match tokio::task::spawn_blocking(move || source()).await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("reading the counters panicked: {e}")),
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    use std::collections::BTreeMap;

    use crate::stats::{RuleStats, Stats, TotalStats};

    /// Stats with every value distinct, and rule names that need escaping.
    pub fn stats() -> Stats {
        let rule = |name: &str, action: &str, hook: &str, active: bool, base: u64| RuleStats {
            name: name.into(),
            action: action.into(),
            hook: hook.into(),
            active,
            matched: base + 1,
            kept: base + 2,
            dropped: base + 3,
            dropped_bytes: base + 4,
            redacted: base + 5,
            fired: None,
            groups: None,
        };
        let passthrough: BTreeMap<String, u64> = [
            "compressed",
            "json",
            "chunked",
            "not_logs",
            "oversize",
            "partial",
            "malformed",
            "disabled",
            "other",
        ]
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_string(), 1000 + i as u64))
        .collect();
        Stats {
            generation: 7,
            enabled: true,
            rules_error: None,
            rules: vec![
                rule("drop-debug-noise", "drop", "otlp", true, 10),
                rule(r#"quote " back \ nl"#, "sample", "otlp", true, 20),
                rule("line\nbreak", "count", "otlp", false, 30),
                rule("ünïcødé ✓", "redact", "otlp", true, 40),
                rule("big", "count", "otlp", true, u64::MAX - 10),
                RuleStats {
                    fired: Some(3),
                    ..rule("on-error", "trigger", "otlp", true, 50)
                },
                RuleStats {
                    groups: Some(
                        [("503".to_string(), 4), ("__other__".to_string(), 1)]
                            .into_iter()
                            .collect(),
                    ),
                    ..rule("by-code", "count", "otlp", true, 5)
                },
            ],
            totals: TotalStats {
                connections: 101,
                requests: 102,
                log_requests: 103,
                records: 104,
                records_dropped: 105,
                bytes_in: 106,
                bytes_out: 107,
                edit_failures: 108,
                untracked_bytes: 109,
                in_flight: 110,
                in_flight_longest_ms: 114,
                released: 111,
                walk_steps: 112,
                fast_records: 113,
                passthrough,
            },
            uprobes: Default::default(),
            recorders: vec![crate::stats::RecorderStats {
                name: "checkout-debug".into(),
                records: 12,
                bytes: 3456,
                overwritten: 7,
                too_long: 1,
                flushes: 2,
                flushed_records: 30,
                ..Default::default()
            }],
            states: vec![crate::stats::StateStats {
                name: "incident".into(),
                on: true,
                remaining_ms: 1500,
            }],
            disabled_reason: None,
            disabled_cause: None,
            cost: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn names_map_mechanically() {
        let all: Vec<&Family> = RULE_FAMILIES
            .iter()
            .map(|(f, _)| f)
            .chain(TOTAL_FAMILIES.iter().map(|(f, _)| f))
            .chain(std::iter::once(&PASSTHROUGH))
            .chain(GAUGES.iter().map(|(f, _)| f))
            .chain(RECORDER_FAMILIES.iter().map(|(f, _)| f))
            .chain(UPROBE_FAMILIES.iter().map(|(f, _)| f))
            .chain([&FIRED, &GROUP_MATCHED, &STATE_ON, &DISABLED_INFO])
            .chain(COST_FAMILIES.iter().map(|(f, _)| f))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for f in &all {
            let suffix = if f.kind == Kind::Counter {
                "_total"
            } else {
                ""
            };
            assert_eq!(
                format!("{}{suffix}", f.otel.replace('.', "_")),
                f.prometheus,
                "{f:?}"
            );
            assert!(f.prometheus.starts_with("dt_") && f.otel.starts_with("dt."));
            // What an OpenTelemetry Collector's Prometheus translation adds from the unit:
            // nothing for an `{annotation}`, `_bytes` for `By` unless a word of the name is
            // `bytes` already, `_ratio` for a gauge in `1`. So only the first two are used.
            let words: Vec<&str> = f.otel.split(['.', '_']).collect();
            match f.unit {
                "By" => assert!(
                    words.contains(&"bytes"),
                    "{f:?}: the translation adds _bytes"
                ),
                u => assert!(
                    u.starts_with('{') && u.ends_with('}'),
                    "{f:?}: the translation adds a suffix for {u}"
                ),
            }
            assert!(seen.insert(f.prometheus), "duplicate {}", f.prometheus);
            assert!(!f.help.contains('\n') && !f.help.is_empty());
        }
        assert_eq!(all.len(), 51);
    }

    /// The README's metric table ("## Monitoring") lists every family, once, with its type and
    /// the labels its samples carry, and nothing else.
    #[test]
    fn the_readme_lists_every_family() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("\n## Monitoring\n")
            .expect("a Monitoring section");
        let section = &readme[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let mut rows = BTreeMap::new();
        for line in section.lines().filter(|l| l.starts_with("| `dt_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`');
            let labels: Vec<String> = cells[3]
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            assert!(
                rows.insert(name, (cells[2], labels)).is_none(),
                "{name} twice"
            );
        }
        // Stats with a sample in every family: rules, groups, a recorder, a state, the cost, and
        // the rip cord pulled.
        let mut stats = testdata::stats();
        stats.enabled = false;
        stats.disabled_reason = Some("the rip cord is pulled".into());
        stats.disabled_cause = Some("disable".into());
        stats.cost = Some(Default::default());
        stats.states = vec![crate::stats::StateStats::default()];
        stats.recorders = vec![crate::stats::RecorderStats::default()];
        let all = families(&stats);
        for (f, samples) in &all {
            let Some((kind, labels)) = rows.remove(f.prometheus) else {
                panic!("{} is not in the README's metric table", f.prometheus);
            };
            let want = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            assert_eq!(kind, want, "{}", f.prometheus);
            let sample = samples
                .iter()
                .max_by_key(|s| s.labels.len())
                .unwrap_or_else(|| panic!("{}: no sample", f.prometheus));
            let got: Vec<&str> = sample.labels.iter().map(|(k, _)| *k).collect();
            assert_eq!(labels, got, "{}: labels", f.prometheus);
        }
        assert!(rows.is_empty(), "not families: {rows:?}");
        assert_eq!(all.len(), 51);
    }

    /// `stats`' `disabled_cause` as the label: its word, or `unknown` for one this agent does
    /// not know (stats of another version) or none.
    #[test]
    fn disabled_causes_are_the_label_words() {
        for w in DISABLED_REASONS {
            assert_eq!(disabled_token(Some(w)), w);
            // A plain word: no quoting in either output, one series per cause.
            assert!(
                w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{w}"
            );
            assert!(DISABLED_INFO.help.contains(w), "{w} is not in the help");
        }
        assert_eq!(disabled_token(Some("ceiling: 3.2% of 64 CPUs")), "unknown");
        assert_eq!(disabled_token(Some("")), "unknown");
        assert_eq!(disabled_token(None), "unknown");
    }

    #[test]
    fn disabled_info_is_labelled_with_the_token_only() {
        let mut stats = testdata::stats();
        assert!(
            families(&stats)
                .iter()
                .any(|(f, s)| f.prometheus == DISABLED_INFO.prometheus && s.is_empty())
        );
        stats.enabled = false;
        stats.disabled_reason = Some(
            "ceiling: dt's kernel programs took 0.1683% of all 2 CPUs over the last 999 ms".into(),
        );
        stats.disabled_cause = Some("ceiling".into());
        let all = families(&stats);
        let (_, samples) = all
            .iter()
            .find(|(f, _)| f.prometheus == DISABLED_INFO.prometheus)
            .unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].labels, vec![("reason", "ceiling".to_string())]);
        assert_eq!(samples[0].value, 1);
    }
}
