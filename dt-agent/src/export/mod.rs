//! What leaves the agent over the network. Metrics out: the agent's counters
//! ([`Stats`](crate::Stats)) as Prometheus text on a loopback `/metrics` endpoint, and pushed as
//! OTLP/HTTP metrics (Dynamic Telemetry's log-to-metric conversion: the kernel turns log records
//! into counts, and these counts leave as metrics).
//!
//! Both outputs carry the same metric families, with the same values and the same labels
//! (attributes in OTLP). The name mapping is mechanical: the OTLP name with every `.` turned
//! into `_`, plus `_total` for counters, is the Prometheus name (which is what an OpenTelemetry
//! Collector's Prometheus exporter produces from the OTLP metrics, since the units are either
//! `By`, whose `bytes` is already in the name, or `{annotation}`s, which it leaves out).
//!
//! | Prometheus | OTLP | kind | labels / attributes | from |
//! |---|---|---|---|---|
//! | `dt_rule_matched_total` | `dt.rule.matched` | counter | `rule`, `action`, `hook`, `active` | `rules[].matched` |
//! | `dt_rule_kept_total` | `dt.rule.kept` | counter | same | `rules[].kept` |
//! | `dt_rule_dropped_total` | `dt.rule.dropped` | counter | same | `rules[].dropped` |
//! | `dt_rule_dropped_bytes_total` | `dt.rule.dropped_bytes` | counter | same | `rules[].dropped_bytes` |
//! | `dt_rule_redacted_total` | `dt.rule.redacted` | counter | same | `rules[].redacted` |
//! | `dt_connections_total` | `dt.connections` | counter | | `totals.connections` |
//! | `dt_requests_total` | `dt.requests` | counter | | `totals.requests` |
//! | `dt_log_requests_total` | `dt.log_requests` | counter | | `totals.log_requests` |
//! | `dt_records_total` | `dt.records` | counter | | `totals.records` |
//! | `dt_records_dropped_total` | `dt.records.dropped` | counter | | `totals.records_dropped` |
//! | `dt_bytes_in_total` | `dt.bytes.in` | counter | | `totals.bytes_in` |
//! | `dt_bytes_out_total` | `dt.bytes.out` | counter | | `totals.bytes_out` |
//! | `dt_edit_failures_total` | `dt.edit_failures` | counter | | `totals.edit_failures` |
//! | `dt_untracked_bytes_total` | `dt.untracked_bytes` | counter | | `totals.untracked_bytes` |
//! | `dt_passthrough_total` | `dt.passthrough` | counter | `reason` | `totals.passthrough.*` |
//! | `dt_generation` | `dt.generation` | gauge | | `generation` |
//! | `dt_enabled` | `dt.enabled` | gauge (1/0) | | `enabled` |
//! | `dt_requests_in_flight` | `dt.requests.in_flight` | gauge | | `totals.in_flight` |
//! | `dt_rules_refused` | `dt.rules.refused` | gauge (1/0) | | `rules_error` present |
//! | `dt_released_total` | `dt.released` | counter | | `totals.released` |
//! | `dt_recorder_*` | `dt.recorder.*` | gauges `records`, `bytes`; counters `overwritten`, `too_long`, `flushes`, `flushed_records`, `flush_failures`, `lost`, `recorded` | `recorder` | `recorders[].*` |
//! | `dt_uprobe_attached`, `dt_uprobe_detaching` | `dt.uprobe.attached`, `dt.uprobe.detaching` | gauges | | `uprobes.attached`, `uprobes.detaching` |
//! | `dt_uprobe_*_total` | `dt.uprobe.*` | counters `calls`, `nested`, `unreadable`, `pages_faulted_in`, `preempted`, `truncated`, `captured`, `capture_lost`, `capture_throttled`, `exported`, `export_failed` | | `uprobes.*` |
//! | `dt_rule_fired_total`, `dt_rule_group_matched_total`, `dt_state_on`, `dt_disabled_info`, the cost ceiling's | | | | see [`families`] |
//!
//! Every label value is a string; `active` is `"true"` or `"false"`. In OTLP, counters are
//! monotonic cumulative Sums, and gauges are Gauges; every value is an integer (`as_int`). A
//! counter's start time is when it began counting: for the kernel's counters, the pins' making
//! when the agent adopted them (they carry on across restarts), else the agent's start; for the
//! agent's own (`uprobes.pages_faulted_in`, `preempted`, `capture_throttled`, `exported`,
//! `export_failed` and the ceiling's `exceeded`, see [`families::Since`]), the agent's start.
//!
//! Also here: [`capture`], the uprobe hook's captured calls as OTLP logs, `http`, the
//! plain `http://` poster both OTLP outputs use, and [`identity`], the `service.instance.id` of
//! the OTLP metrics' resource.
//!
//! The pieces, for `dt-agent run`:
//! - [`bind_metrics`] then [`serve_prometheus`] (a task) for the `/metrics` endpoint, which
//!   listens on loopback only, unless `metrics_public` chose [`bind_metrics_public`];
//! - [`push_otlp`] (a task) to push every interval, built on [`push_once`] and [`otlp_request`].

pub mod capture;
pub(crate) mod families;
pub mod flush;
pub(crate) mod http;
pub mod identity;
mod otlp_metrics;
pub mod own;
mod prometheus;

pub use families::StatsSource;
pub use otlp_metrics::{CounterStarts, PUSH_TIMEOUT, otlp_request, push_once, push_otlp};
pub use prometheus::{
    CONTENT_TYPE, bind_metrics, bind_metrics_public, render_prometheus, serve_prometheus,
};

/// Starts a thread named `name` that runs `work` to its end on a tokio runtime of its own (the
/// exporters' threads: they post with async HTTP, away from the agent's lock and runtime).
/// `what` names it in logs and errors.
pub(crate) fn spawn_on_own_runtime<F, Fut>(
    name: &str,
    what: &'static str,
    work: F,
) -> anyhow::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    use anyhow::Context as _;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(work()),
                Err(e) => log::error!("{what}: no runtime: {e}"),
            }
        })
        .with_context(|| format!("starting the {what}"))
}

/// Failures in a row between two log lines after the first (a collector down for an hour at a
/// 10 s interval is not 360 warnings).
pub(crate) const SAY_AGAIN_EVERY: u64 = 30;

/// Whether the `in_a_row`-th failure in a row (from 1) is logged: the first, then every
/// [`SAY_AGAIN_EVERY`]-th.
pub(crate) fn worth_saying(in_a_row: u64) -> bool {
    in_a_row == 1 || in_a_row.is_multiple_of(SAY_AGAIN_EVERY)
}
