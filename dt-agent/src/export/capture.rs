//! Capture: the uprobe hook's `PROBE_EVENTS` ring buffer drained by a thread of its own and
//! posted as batches of OTLP log records (ExportLogsServiceRequest, HTTP/protobuf) to the
//! configured `capture_endpoint`. While a post is in flight the ring buffer is not read; when it
//! fills, the kernel counts each refused call (`capture_lost`). With `[ceiling]
//! captures_per_second`, calls over that many in a second are read and counted
//! (`capture_throttled`), not exported.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{MapData, RingBuf};
use dt_ebpf_common::uprobe::{EV_TRUNCATED, EV_UNREADABLE, PROBE_MSG_LEN, ProbeEvent};

/// Where a captured call came from, for the exporter (by entry id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub probe: String,
    pub symbol: String,
    pub binary: PathBuf,
    /// The probe's `service`; none: the process name.
    pub service: Option<String>,
}

/// Most records in one export request.
const BATCH: usize = 512;
/// Bound on one post: connecting, sending, and reading the answer.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each of the last posts while the agent stops.
const FINAL_POST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct ExportCounters {
    exported: AtomicU64,
    failed: AtomicU64,
    /// Over `[ceiling] captures_per_second`: read from the ring buffer, not exported.
    throttled: AtomicU64,
}

/// The capture exporter: a thread draining `PROBE_EVENTS` and posting OTLP log records.
pub struct Exporter {
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<ExportCounters>,
}

impl Exporter {
    /// Starts the thread that drains `ring` and posts to `endpoint`; `meta` says where each
    /// entry id's calls come from.
    pub fn start(
        ring: RingBuf<MapData>,
        endpoint: hyper::Uri,
        meta: Arc<Mutex<HashMap<u32, EntryMeta>>>,
        per_second: Option<u64>,
    ) -> anyhow::Result<Exporter> {
        let counters = Arc::new(ExportCounters::default());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let c = counters.clone();
        let thread =
            super::spawn_on_own_runtime("dt-capture", "capture exporter", move || async move {
                if let Err(e) = export_loop(ring, endpoint, meta, c, rx, per_second).await {
                    log::error!("capture exporter stopped: {e:#}");
                }
            })?;
        Ok(Exporter {
            shutdown: Some(tx),
            thread: Some(thread),
            counters,
        })
    }
}

impl Exporter {
    /// (records exported, records whose post failed, records over the captures ceiling).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.counters.exported.load(Ordering::Relaxed),
            self.counters.failed.load(Ordering::Relaxed),
            self.counters.throttled.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn export_loop(
    ring: RingBuf<MapData>,
    endpoint: hyper::Uri,
    meta: Arc<Mutex<HashMap<u32, EntryMeta>>>,
    counters: Arc<ExportCounters>,
    stop: tokio::sync::watch::Receiver<bool>,
    per_second: Option<u64>,
) -> anyhow::Result<()> {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the ring buffer owns its map's file descriptor, which stays open and the same
    // for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow!("polling the capture ring buffer: {e}"))?;
    let mut batch: Vec<ProbeEvent> = Vec::with_capacity(BATCH);
    let mut exp = Export {
        endpoint: &endpoint,
        meta: &meta,
        counters: &counters,
        stop: stop.clone(),
    };
    let mut stopped = stop;
    // `[ceiling] captures_per_second`: the second being counted, and its captures so far.
    let mut second = (std::time::Instant::now(), 0u64);
    loop {
        let stopping = tokio::select! {
            _ = stopped.wait_for(|s| *s) => true,
            ready = fd.readable_mut() => {
                let mut guard = ready.context("waiting on the capture ring buffer")?;
                guard.clear_ready();
                false
            }
        };
        // Drain what is there, posting whenever a batch is full. While a post is in flight the
        // ring buffer is not read: if it fills, the kernel counts the calls it refuses.
        loop {
            let ev = fd.get_mut().next().and_then(|item| parse_event(&item));
            let Some(ev) = ev else {
                break;
            };
            if let Some(limit) = per_second {
                if second.0.elapsed() >= Duration::from_secs(1) {
                    second = (std::time::Instant::now(), 0);
                }
                if second.1 >= limit {
                    let before = counters.throttled.fetch_add(1, Ordering::Relaxed);
                    if before == 0 {
                        log::warn!(
                            "captured calls over the ceiling of {limit} a second are counted \
                             (capture_throttled) and not exported"
                        );
                    }
                    continue;
                }
                second.1 += 1;
            }
            batch.push(ev);
            if batch.len() >= BATCH {
                exp.post_batch(&mut batch, stopping).await;
            }
        }
        if !batch.is_empty() {
            exp.post_batch(&mut batch, stopping).await;
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Where and how batches are posted.
struct Export<'a> {
    endpoint: &'a hyper::Uri,
    meta: &'a Arc<Mutex<HashMap<u32, EntryMeta>>>,
    counters: &'a ExportCounters,
    /// Set when the agent stops: a post in flight is abandoned.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Export<'_> {
    /// Posts `batch` (and empties it). While running, a post takes up to [`POST_TIMEOUT`] unless
    /// the agent stops; the last posts, when stopping, take up to [`FINAL_POST_TIMEOUT`].
    async fn post_batch(&mut self, batch: &mut Vec<ProbeEvent>, stopping: bool) {
        let n = batch.len() as u64;
        let request = {
            let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            logs_request(batch, &meta, realtime_offset_ns(), unix_nanos_now())
        };
        batch.clear();
        use prost::Message as _;
        let body = request.encode_to_vec();
        let endpoint = self.endpoint;
        let result = if stopping {
            tokio::time::timeout(FINAL_POST_TIMEOUT, post(endpoint, body))
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer within {FINAL_POST_TIMEOUT:?}")))
        } else {
            tokio::select! {
                r = tokio::time::timeout(POST_TIMEOUT, post(endpoint, body)) => {
                    r.unwrap_or_else(|_| Err(anyhow!("no answer within {POST_TIMEOUT:?}")))
                }
                _ = self.stop.wait_for(|s| *s) => Err(anyhow!("the agent is stopping")),
            }
        };
        let counters = self.counters;
        match result {
            Ok(()) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let before = counters.failed.fetch_add(n, Ordering::Relaxed);
                // The first failure, then one line per 1000 lost records.
                if before == 0 || (before + n) / 1000 > before / 1000 {
                    log::warn!(
                        "exporting {n} captured calls to {endpoint} failed: {e:#} ({} so far)",
                        before + n
                    );
                }
            }
        }
    }
}

fn parse_event(bytes: &[u8]) -> Option<ProbeEvent> {
    if bytes.len() < std::mem::size_of::<ProbeEvent>() {
        return None;
    }
    // SAFETY: the ring buffer record is at least one ProbeEvent, a plain-old-data type; the
    // read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const ProbeEvent) })
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds: what turns `bpf_ktime_get_ns()` into Unix
/// time.
fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write to.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ERROR`, `ERROR2`, ... for SeverityNumbers 1-24; empty for 0.
pub fn severity_text(n: u8) -> String {
    const NAMES: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    if n == 0 || n > 24 {
        return String::new();
    }
    let level = NAMES[usize::from((n - 1) / 4)];
    match (n - 1) % 4 {
        0 => level.to_string(),
        k => format!("{level}{}", k + 1),
    }
}

fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// The captured calls as one export request: a ResourceLogs per (service, process) with
/// `service.name`, `process.pid` and `host.name`, a ScopeLogs `dt.uprobe`, and per call a
/// LogRecord: time (the call's), observed time (the export's), severity number and text, the
/// message as the string body, and attributes `dt.probe`, `code.function.name`, `thread.id`, `thread.name`,
/// plus `dt.message.truncated` (true) when the message was cut at the bound or
/// `dt.message.unreadable` (true) when it could not be read.
pub fn logs_request(
    events: &[ProbeEvent],
    meta: &HashMap<u32, EntryMeta>,
    realtime_offset_ns: i128,
    observed_unix_nanos: u64,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value::Value,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    let kv = |key: &str, value: Value| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let mut groups: Vec<((String, u32), Vec<LogRecord>)> = Vec::new();
    for ev in events {
        let m = meta.get(&ev.entry);
        let comm = c_string(&ev.comm);
        let service = m
            .and_then(|m| m.service.clone())
            .unwrap_or_else(|| comm.clone());
        let pid = (ev.pid_tgid >> 32) as u32;
        let tid = ev.pid_tgid as u32;
        let msg_len = (ev.msg_len as usize).min(PROBE_MSG_LEN - 1);
        let mut attributes = vec![
            kv(
                "dt.probe",
                Value::StringValue(m.map(|m| m.probe.clone()).unwrap_or_default()),
            ),
            kv(
                "code.function.name",
                Value::StringValue(m.map(|m| m.symbol.clone()).unwrap_or_default()),
            ),
            kv("thread.id", Value::IntValue(tid as i64)),
            kv("thread.name", Value::StringValue(comm)),
        ];
        if ev.flags & EV_TRUNCATED != 0 {
            attributes.push(kv("dt.message.truncated", Value::BoolValue(true)));
        }
        if ev.flags & EV_UNREADABLE != 0 {
            attributes.push(kv("dt.message.unreadable", Value::BoolValue(true)));
        }
        let time = (ev.time_ns as i128 + realtime_offset_ns).clamp(0, u64::MAX as i128) as u64;
        let record = LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: observed_unix_nanos,
            severity_number: ev.severity as i32,
            severity_text: severity_text(ev.severity),
            body: Some(AnyValue {
                value: Some(Value::StringValue(
                    String::from_utf8_lossy(&ev.msg[..msg_len]).into_owned(),
                )),
            }),
            attributes,
            ..Default::default()
        };
        let key = (service, pid);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, records)) => records.push(record),
            None => groups.push((key, vec![record])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|((service, pid), log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue(service)),
                        kv("process.pid", Value::IntValue(pid as i64)),
                        // The host the pid is of: the same pid on two hosts is two processes.
                        kv(
                            "host.name",
                            Value::StringValue(crate::sys::hostname().to_string()),
                        ),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "dt.uprobe".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Posts one protobuf body on a fresh connection; errors unless the answer is 2xx.
async fn post(endpoint: &hyper::Uri, body: Vec<u8>) -> anyhow::Result<()> {
    super::http::post_protobuf(endpoint, body, "capture endpoint")
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_ebpf_common::uprobe::COMM_LEN;

    #[test]
    fn severity_texts() {
        assert_eq!(severity_text(0), "");
        assert_eq!(severity_text(5), "DEBUG");
        assert_eq!(severity_text(17), "ERROR");
        assert_eq!(severity_text(18), "ERROR2");
        assert_eq!(severity_text(24), "FATAL4");
    }

    #[test]
    fn captured_calls_become_log_records() {
        let mut ev = ProbeEvent {
            time_ns: 1_000,
            pid_tgid: (42u64 << 32) | 43,
            entry: 7,
            msg_len: 5,
            severity: 17,
            flags: 0,
            comm: [0; COMM_LEN],
            msg: [0; PROBE_MSG_LEN],
        };
        ev.comm[..3].copy_from_slice(b"app");
        ev.msg[..5].copy_from_slice(b"hello");
        let mut other = ev;
        other.pid_tgid = 99 << 32;
        other.flags = EV_TRUNCATED;
        let meta: HashMap<u32, EntryMeta> = [(
            7,
            EntryMeta {
                probe: "syslog".into(),
                symbol: "__syslog_chk".into(),
                binary: "/lib/libc.so.6".into(),
                service: None,
            },
        )]
        .into();
        let req = logs_request(&[ev, other, ev], &meta, 5_000, 9);
        assert_eq!(req.resource_logs.len(), 2);
        let rl = &req.resource_logs[0];
        let resource: Vec<(&str, String)> = rl
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|a| {
                (
                    a.key.as_str(),
                    format!("{:?}", a.value.as_ref().unwrap().value),
                )
            })
            .collect();
        assert_eq!(
            resource.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["service.name", "process.pid", "host.name"]
        );
        assert!(
            resource[2].1.contains(crate::sys::hostname()),
            "{resource:?}"
        );
        let records = &rl.scope_logs[0].log_records;
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].time_unix_nano, 6_000);
        assert_eq!(records[0].observed_time_unix_nano, 9);
        assert_eq!(records[0].severity_number, 17);
        assert_eq!(records[0].severity_text, "ERROR");
        assert_eq!(
            format!("{:?}", records[0].body),
            format!(
                "{:?}",
                Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            "hello".into()
                        )
                    )
                })
            )
        );
        let keys: Vec<&str> = records[0]
            .attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert_eq!(
            keys,
            vec!["dt.probe", "code.function.name", "thread.id", "thread.name"]
        );
        let truncated = &req.resource_logs[1].scope_logs[0].log_records[0];
        assert!(
            truncated
                .attributes
                .iter()
                .any(|a| a.key == "dt.message.truncated")
        );
    }
}
