//! The real OpenTelemetry Rust exporter (opentelemetry-otlp 0.33, HTTP + protobuf, reqwest's
//! blocking client), driven with a deterministic plan. Every export result is checked: the
//! exporter sits behind [`CheckedExporter`], which records each batch's result and the exact
//! LogRecords (as the exporter's own conversion encodes them) that went out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::InstrumentationScope;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::logs::v1::LogRecord as ProtoLogRecord;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter, SdkLogRecord, SdkLoggerProvider,
};

use crate::otlp::BASE_TIME_NANOS;
use crate::record::{ReceivedRecord, SentRecord, log_record_field_len, to_received};

/// One record the plan emits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRecord {
    pub scope: String,
    /// 0 emits no severity (UNSPECIFIED).
    pub severity_number: i32,
    pub body: String,
    /// Attributes; a value written `int:N` or `bool:B` is set as an int or a bool (as
    /// [`crate::record`] renders them back), anything else as a string.
    pub attributes: Vec<(String, String)>,
    /// The record's `event_name`.
    pub event_name: Option<String>,
}

/// How the exporter is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportMode {
    /// `LogExporter::export` called directly with batches of `batch_size`.
    Direct,
    /// The SDK's BatchLogProcessor (its own thread), `max_export_batch_size = batch_size`,
    /// then `force_flush` and `shutdown`, both checked.
    BatchProcessor,
}

/// What to send: per service, its records in order.
#[derive(Clone, Debug)]
pub struct ExportPlan {
    pub services: Vec<(String, Vec<PlannedRecord>)>,
    pub batch_size: usize,
    pub mode: ExportMode,
}

impl ExportPlan {
    /// `total` records spread round-robin over `services`, deterministic:
    /// - severity: `(i * 7) % 24 + 1`, except every 29th record has none (0);
    /// - body: every 10th mentions `healthcheck`, every 23rd `HealthCheck` (no match: case);
    /// - attributes: `request.id`, and `http.route` (`/healthz` on every 13th, else an API route),
    ///   except every 17th record, which has no attributes;
    /// - scope: `db` on every 3rd record, else `http`.
    pub fn mixed(total: usize, services: &[&str], batch_size: usize) -> ExportPlan {
        let mut per: Vec<(String, Vec<PlannedRecord>)> = services
            .iter()
            .map(|s| (s.to_string(), Vec::new()))
            .collect();
        for i in 0..total {
            let severity_number = if i % 29 == 7 {
                0
            } else {
                ((i * 7) % 24 + 1) as i32
            };
            let body = if i % 10 == 3 {
                format!("GET /healthz healthcheck ok #{i}")
            } else if i % 23 == 4 {
                format!("HealthCheck (capitalised) #{i}")
            } else {
                format!("processed order {i} in {} ms", i % 97)
            };
            let attributes = if i % 17 == 11 {
                Vec::new()
            } else {
                let route = if i % 13 == 5 {
                    "/healthz".to_string()
                } else {
                    format!("/api/orders/{}", i % 50)
                };
                vec![
                    ("request.id".to_string(), format!("req-{i}")),
                    ("http.route".to_string(), route),
                ]
            };
            let scope = if i % 3 == 0 { "db" } else { "http" }.to_string();
            per[i % services.len()].1.push(PlannedRecord {
                scope,
                severity_number,
                body,
                attributes,
                event_name: None,
            });
        }
        ExportPlan {
            services: per,
            batch_size,
            mode: ExportMode::Direct,
        }
    }

    pub fn with_mode(mut self, mode: ExportMode) -> ExportPlan {
        self.mode = mode;
        self
    }

    pub fn total(&self) -> usize {
        self.services.iter().map(|(_, r)| r.len()).sum()
    }

    /// The records as the receiver must see them (before any filtering).
    pub fn records(&self) -> Vec<ReceivedRecord> {
        self.services
            .iter()
            .flat_map(|(svc, recs)| {
                recs.iter().map(move |r| ReceivedRecord {
                    service: svc.clone(),
                    scope: r.scope.clone(),
                    severity_number: r.severity_number,
                    body: Some(r.body.clone()),
                    attributes: r.attributes.clone(),
                })
            })
            .collect()
    }

    /// Number of HTTP requests Direct mode makes.
    pub fn direct_batches(&self) -> usize {
        self.services
            .iter()
            .map(|(_, r)| r.len().div_ceil(self.batch_size))
            .sum()
    }
}

/// What the exporter did.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    pub batches_ok: usize,
    pub batches_failed: usize,
    pub errors: Vec<String>,
    /// Records in batches whose export returned Ok, as encoded (with field lengths).
    pub sent: Vec<SentRecord>,
    /// Records in batches that failed.
    pub failed_records: usize,
    pub records_by_service: BTreeMap<String, usize>,
    /// Records by severity level name (UNSPECIFIED, TRACE, ... FATAL).
    pub records_by_level: BTreeMap<String, usize>,
    /// `force_flush` / `shutdown` results (BatchProcessor mode).
    pub flush_errors: Vec<String>,
}

impl ExportReport {
    /// Panics unless every batch and flush succeeded and `expected_records` went out.
    pub fn assert_all_ok(&self, expected_records: usize) {
        assert!(
            self.batches_failed == 0 && self.errors.is_empty() && self.flush_errors.is_empty(),
            "exporter failures: {} batches failed, errors {:?}, flush errors {:?}",
            self.batches_failed,
            self.errors,
            self.flush_errors
        );
        assert_eq!(self.sent.len(), expected_records, "records exported");
        assert!(self.batches_ok > 0);
    }

    pub fn sent_records(&self) -> Vec<ReceivedRecord> {
        self.sent.iter().map(|s| s.record.clone()).collect()
    }
}

fn severity(n: i32) -> Option<Severity> {
    use Severity::*;
    Some(match n {
        1 => Trace,
        2 => Trace2,
        3 => Trace3,
        4 => Trace4,
        5 => Debug,
        6 => Debug2,
        7 => Debug3,
        8 => Debug4,
        9 => Info,
        10 => Info2,
        11 => Info3,
        12 => Info4,
        13 => Warn,
        14 => Warn2,
        15 => Warn3,
        16 => Warn4,
        17 => Error,
        18 => Error2,
        19 => Error3,
        20 => Error4,
        21 => Fatal,
        22 => Fatal2,
        23 => Fatal3,
        24 => Fatal4,
        _ => return None,
    })
}

#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    errors: Vec<String>,
    sent: Vec<SentRecord>,
    failed_records: usize,
}

/// Wraps the OTLP exporter: records every export's result and what it carried.
#[derive(Debug)]
pub struct CheckedExporter {
    inner: opentelemetry_otlp::LogExporter,
    service: String,
    tally: Arc<Mutex<Tally>>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tally(ok={}, failed={})", self.ok, self.failed)
    }
}

impl LogExporter for CheckedExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        // The exporter's own conversion (opentelemetry-proto's transform) gives the exact
        // LogRecord messages it encodes.
        let carried: Vec<SentRecord> = batch
            .iter()
            .map(|(rec, scope)| {
                let p = ProtoLogRecord::from(rec);
                let name = rec
                    .target()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| scope.name().to_owned());
                SentRecord {
                    record: to_received(&self.service, &name, &p),
                    field_len: log_record_field_len(&p),
                }
            })
            .collect();
        let r = self.inner.export(batch).await;
        let mut t = self.tally.lock().unwrap();
        match &r {
            Ok(()) => {
                t.ok += 1;
                t.sent.extend(carried);
            }
            Err(e) => {
                t.failed += 1;
                t.failed_records += carried.len();
                t.errors.push(e.to_string());
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

pub fn build_exporter(endpoint: &str) -> opentelemetry_otlp::LogExporter {
    opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(20))
        // A retry would resend records and blur the counts; a failure must show.
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .expect("build OTLP log exporter")
}

fn resource(service: &str) -> Resource {
    Resource::builder()
        .with_service_name(service.to_owned())
        .build()
}

fn fill(rec: &mut SdkLogRecord, p: &PlannedRecord, i: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(BASE_TIME_NANOS + i);
    rec.set_timestamp(t);
    rec.set_observed_timestamp(t);
    if let Some(s) = severity(p.severity_number) {
        rec.set_severity_number(s);
        rec.set_severity_text(s.name());
    }
    rec.set_body(AnyValue::from(p.body.clone()));
    for (k, v) in &p.attributes {
        let typed = if let Some(n) = v.strip_prefix("int:").and_then(|n| n.parse::<i64>().ok()) {
            AnyValue::Int(n)
        } else if let Some(b) = v.strip_prefix("bool:").and_then(|b| b.parse::<bool>().ok()) {
            AnyValue::Boolean(b)
        } else {
            AnyValue::from(v.clone())
        };
        rec.add_attribute(k.clone(), typed);
    }
    if let Some(e) = &p.event_name {
        // The SDK takes a `&'static str` (event names are meant to be constants).
        rec.set_event_name(Box::leak(e.clone().into_boxed_str()));
    }
}

/// Exports `plan` to `http://127.0.0.1:<port>/v1/logs`.
pub fn export_with_real_exporter(port: u16, plan: &ExportPlan) -> ExportReport {
    export_with_real_exporter_to(&format!("http://127.0.0.1:{port}/v1/logs"), plan)
}

/// Exports `plan` to `endpoint` (a full URL, e.g. `http://[::1]:4318/v1/logs`). Runs on a thread
/// of its own (reqwest's blocking client must not run inside a tokio runtime).
pub fn export_with_real_exporter_to(endpoint: &str, plan: &ExportPlan) -> ExportReport {
    let endpoint = endpoint.to_owned();
    let plan = plan.clone();
    std::thread::spawn(move || export_on_this_thread(&endpoint, &plan))
        .join()
        .expect("exporter thread panicked")
}

fn export_on_this_thread(endpoint: &str, plan: &ExportPlan) -> ExportReport {
    let mut report = ExportReport::default();
    let mut seq: u64 = 0;
    for (service, records) in &plan.services {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut exporter = CheckedExporter {
            inner: build_exporter(endpoint),
            service: service.clone(),
            tally: tally.clone(),
        };
        let res = resource(service);
        match plan.mode {
            ExportMode::Direct => {
                exporter.set_resource(&res);
                // A provider without processors, only to mint SdkLogRecords.
                let minter = SdkLoggerProvider::builder().build();
                let logger = minter.logger("dt-tests");
                let mut scopes: BTreeMap<String, InstrumentationScope> = BTreeMap::new();
                for r in records {
                    scopes.entry(r.scope.clone()).or_insert_with(|| {
                        InstrumentationScope::builder(r.scope.clone())
                            .with_version("1.0.0")
                            .build()
                    });
                }
                for chunk in records.chunks(plan.batch_size.max(1)) {
                    let owned: Vec<(SdkLogRecord, &InstrumentationScope)> = chunk
                        .iter()
                        .map(|p| {
                            let mut rec = logger.create_log_record();
                            fill(&mut rec, p, seq);
                            seq += 1;
                            (rec, &scopes[&p.scope])
                        })
                        .collect();
                    let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                        owned.iter().map(|(r, s)| (r, *s)).collect();
                    let _ = futures_executor::block_on(exporter.export(LogBatch::new(&refs)));
                }
                if let Err(e) = exporter.shutdown() {
                    report
                        .flush_errors
                        .push(format!("{service}: exporter shutdown: {e}"));
                }
            }
            ExportMode::BatchProcessor => {
                let processor = BatchLogProcessor::builder(exporter)
                    .with_batch_config(
                        BatchConfigBuilder::default()
                            .with_max_queue_size(records.len() + 16)
                            .with_max_export_batch_size(plan.batch_size.max(1))
                            .with_scheduled_delay(Duration::from_millis(200))
                            .build(),
                    )
                    .build();
                let provider = SdkLoggerProvider::builder()
                    .with_resource(res)
                    .with_log_processor(processor)
                    .build();
                let mut loggers = BTreeMap::new();
                for p in records {
                    let logger = loggers.entry(p.scope.clone()).or_insert_with(|| {
                        provider.logger_with_scope(
                            InstrumentationScope::builder(p.scope.clone())
                                .with_version("1.0.0")
                                .build(),
                        )
                    });
                    let mut rec = logger.create_log_record();
                    fill(&mut rec, p, seq);
                    seq += 1;
                    logger.emit(rec);
                }
                if let Err(e) = provider.force_flush() {
                    report
                        .flush_errors
                        .push(format!("{service}: force_flush: {e}"));
                }
                if let Err(e) = provider.shutdown() {
                    report
                        .flush_errors
                        .push(format!("{service}: shutdown: {e}"));
                }
            }
        }
        let t = tally.lock().unwrap();
        report.batches_ok += t.ok;
        report.batches_failed += t.failed;
        report
            .errors
            .extend(t.errors.iter().map(|e| format!("{service}: {e}")));
        report.failed_records += t.failed_records;
        for s in &t.sent {
            *report
                .records_by_service
                .entry(s.record.service.clone())
                .or_default() += 1;
            *report
                .records_by_level
                .entry(crate::model::severity_level(s.record.severity_number).to_owned())
                .or_default() += 1;
        }
        report.sent.extend(t.sent.iter().cloned());
    }
    report
}
