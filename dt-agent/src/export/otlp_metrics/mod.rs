//! The counters as OTLP metrics, pushed over OTLP/HTTP (protobuf) to a collector.

use crate::sys::{hostname, node_name};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hyper::Uri;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use super::families::{Kind, Since, StatsSource, families, read_stats};
use crate::stats::Stats;

/// Bound on one push: connecting, sending, and reading the answer.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of a collector's answer that is read.
/// What the endpoint is called in errors.
const WHAT: &str = "OTLP metrics endpoint";

/// Since when the counters count, in ns since the epoch: the OTLP start time of their Sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterStarts {
    /// The kernel's counters (in maps an agent pins and the next adopts): when they began,
    /// which is the pins' making when this agent adopted them, else this agent's start.
    pub kernel: u64,
    /// The agent's own counters, which a restart begins again at 0: this agent's start.
    pub agent: u64,
}

impl CounterStarts {
    /// Both from one start (no pins adopted).
    pub fn at(start_unix_nanos: u64) -> CounterStarts {
        CounterStarts {
            kernel: start_unix_nanos,
            agent: start_unix_nanos,
        }
    }
}

/// The counters as one OTLP export request: one ResourceMetrics (see [`resource_attributes`];
/// `service.instance.id` from [`super::identity`]), one ScopeMetrics (scope `dt`), and every
/// family of the
/// table in [`crate::export`] under its OTLP name, attributes as the Prometheus labels.
/// Counters are monotonic cumulative Sums from their start (`starts`: the kernel's counters
/// from when they began, the agent's own from its start) to `now_unix_nanos`, so that a
/// restart that carries the kernel's on and begins the agent's again reads right in a
/// cumulative-to-delta conversion; gauges are Gauges at `now_unix_nanos`. Values are `as_int`
/// (counts above `i64::MAX` saturate). Families without data points (no rules, say) are left
/// out.
pub fn otlp_request(
    stats: &Stats,
    starts: CounterStarts,
    now_unix_nanos: u64,
) -> ExportMetricsServiceRequest {
    let mut metrics = Vec::new();
    for (family, samples) in families(stats) {
        if samples.is_empty() {
            continue;
        }
        let start = match (family.kind, family.since) {
            (Kind::Counter, Since::Pins) => starts.kernel,
            (Kind::Counter, Since::Agent) => starts.agent,
            (Kind::Gauge, _) => 0,
        };
        let data_points = samples
            .into_iter()
            .map(|s| NumberDataPoint {
                attributes: s.labels.into_iter().map(|(k, v)| string_kv(k, v)).collect(),
                start_time_unix_nano: start,
                time_unix_nano: now_unix_nanos,
                value: Some(number_data_point::Value::AsInt(
                    i64::try_from(s.value).unwrap_or(i64::MAX),
                )),
                ..Default::default()
            })
            .collect();
        let data = match family.kind {
            Kind::Counter => metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
        };
        metrics.push(Metric {
            name: family.otel.to_string(),
            description: family.help.to_string(),
            unit: family.unit.to_string(),
            data: Some(data),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource_attributes(node_name(), &super::identity::instance_id()),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "dt".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// The resource of dt's metrics: `service.name` = `dt-agent`, `service.version`,
/// `service.instance.id` (`instance`: which agent, see [`super::identity`]), `host.name`, and
/// `k8s.node.name` when the agent runs on a Kubernetes node (the DaemonSet passes it in
/// [`crate::sys::NODE_NAME_ENV`]), so that a fleet's counters stay apart, and add up by node, in
/// the backend.
pub fn resource_attributes(node: Option<&str>, instance: &str) -> Vec<KeyValue> {
    let mut attrs = vec![
        string_kv("service.name", "dt-agent".into()),
        string_kv("service.version", env!("CARGO_PKG_VERSION").into()),
        string_kv("service.instance.id", instance.to_string()),
        string_kv("host.name", hostname().to_string()),
    ];
    if let Some(node) = node.filter(|n| !n.is_empty()) {
        attrs.push(string_kv("k8s.node.name", node.to_string()));
    }
    attrs
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Checks that `endpoint` is something [`push_once`] can post to: an absolute `http://` or
/// `https://` URI with a host. Call it at startup to refuse a bad endpoint early.
pub fn check_otlp_endpoint(endpoint: &Uri) -> anyhow::Result<()> {
    super::http::target(endpoint, WHAT).map(|_| ())
}

/// Reads `source` once and posts [`otlp_request`] (`starts`, now) to `endpoint`
/// as `application/x-protobuf`, on a fresh connection, within [`PUSH_TIMEOUT`]. Errors when
/// the counters cannot be read, the collector cannot be reached or answers anything but 2xx,
/// or it reports rejected data points.
pub async fn push_once(
    endpoint: &Uri,
    starts: CounterStarts,
    source: &StatsSource,
) -> anyhow::Result<()> {
    let stats = read_stats(source).await.context("reading the counters")?;
    let body = otlp_request(&stats, starts, unix_nanos_now()).encode_to_vec();
    match tokio::time::timeout(PUSH_TIMEOUT, post(endpoint, body)).await {
        Ok(r) => r,
        Err(_) => bail!("pushing to {endpoint}: no answer within {PUSH_TIMEOUT:?}"),
    }
}

async fn post(endpoint: &Uri, body: Vec<u8>) -> anyhow::Result<()> {
    let answer = super::http::post_protobuf(endpoint, body, WHAT).await?;
    if answer.protobuf
        && !answer.body.is_empty()
        && let Ok(r) = ExportMetricsServiceResponse::decode(answer.body.as_ref())
        && let Some(p) = r.partial_success
        && p.rejected_data_points > 0
    {
        bail!(
            "POST {endpoint}: the collector rejected {} data points: {}",
            p.rejected_data_points,
            p.error_message
        );
    }
    Ok(())
}

/// Every `interval` (the first push one interval after the call), [`push_once`]: failures are
/// logged with `log::warn!` (the first in a row, then one in [`super::SAY_AGAIN_EVERY`]) and
/// the next interval tries again; this never returns unless the endpoint itself is unusable
/// (see `check_otlp_endpoint`), which is logged as an error, or dt was uninstalled.
/// A zero interval is taken as one second.
pub async fn push_otlp(
    endpoint: Uri,
    interval: Duration,
    starts: CounterStarts,
    source: StatsSource,
) {
    if let Err(e) = check_otlp_endpoint(&endpoint) {
        log::error!("not pushing OTLP metrics: {e:#}");
        return;
    }
    let interval = if interval.is_zero() {
        log::warn!("OTLP metrics push interval is zero; pushing every second");
        Duration::from_secs(1)
    } else {
        interval
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = 0u64;
    loop {
        ticker.tick().await;
        match push_once(&endpoint, starts, &source).await {
            Ok(()) => {
                if failing > 0 {
                    log::info!(
                        "pushing OTLP metrics to {endpoint} works again (after {failing} failures)"
                    );
                }
                failing = 0;
            }
            // `uninstall` with `idle_after_uninstall`: nothing is left to count.
            Err(e) if e.is::<crate::stats::Uninstalled>() => {
                log::info!("dt is uninstalled: OTLP metrics are no longer pushed to {endpoint}");
                return;
            }
            Err(e) => {
                failing += 1;
                if let Some(line) = failure_line(&endpoint, failing, interval, &e) {
                    log::warn!("{line}");
                }
            }
        }
    }
}

/// The log line of the `failing`-th push failure in a row, if it gets one
/// ([`super::worth_saying`]).
fn failure_line(
    endpoint: &Uri,
    failing: u64,
    interval: Duration,
    e: &anyhow::Error,
) -> Option<String> {
    if !super::worth_saying(failing) {
        None
    } else if failing == 1 {
        Some(format!(
            "pushing OTLP metrics to {endpoint} failed: {e:#}; trying again every {interval:?} \
             (said again every {} failures in a row)",
            super::SAY_AGAIN_EVERY
        ))
    } else {
        Some(format!(
            "pushing OTLP metrics to {endpoint} still fails ({failing} in a row): {e:#}"
        ))
    }
}

#[cfg(test)]
mod tests;
