//! The tests' own OTLP request generator (prost messages from opentelemetry-proto).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::record::{SentRecord, flatten_sent};

/// Fixed base timestamp (2024-01-01T00:00:00Z) so requests are deterministic.
pub const BASE_TIME_NANOS: u64 = 1_704_067_200_000_000_000;

pub fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.into())),
    }
}

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(string_value(v)),
        ..Default::default()
    }
}

/// Severity text of a SeverityNumber, as SDKs write it.
pub fn severity_text(n: i32) -> &'static str {
    match n {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "",
    }
}

/// A log record under construction.
#[derive(Clone, Debug)]
pub struct Rec(pub LogRecord);

impl Rec {
    /// A record with a string body, severity number and text, and a timestamp.
    pub fn new(severity_number: i32, body: &str) -> Rec {
        Rec(LogRecord {
            time_unix_nano: BASE_TIME_NANOS,
            observed_time_unix_nano: BASE_TIME_NANOS + 1,
            severity_number,
            severity_text: severity_text(severity_number).into(),
            body: Some(string_value(body)),
            ..Default::default()
        })
    }

    pub fn attr(mut self, k: &str, v: &str) -> Rec {
        self.0.attributes.push(kv(k, v));
        self
    }

    pub fn int_attr(mut self, k: &str, v: i64) -> Rec {
        self.0.attributes.push(KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(v)),
            }),
            ..Default::default()
        });
        self
    }

    pub fn time(mut self, nanos: u64) -> Rec {
        self.0.time_unix_nano = nanos;
        self.0.observed_time_unix_nano = nanos + 1;
        self
    }

    pub fn no_body(mut self) -> Rec {
        self.0.body = None;
        self
    }

    /// Adds a trace and span id (fixed bytes 16 and 8 long).
    pub fn traced(mut self, seed: u8) -> Rec {
        self.0.trace_id = vec![seed; 16];
        self.0.span_id = vec![seed ^ 0x5a; 8];
        self.0.flags = 1;
        self
    }
}

impl From<Rec> for LogRecord {
    fn from(r: Rec) -> LogRecord {
        r.0
    }
}

/// Builds an ExportLogsServiceRequest: `resource` opens a ResourceLogs, `scope` a ScopeLogs in
/// it, `record` appends to the last scope.
#[derive(Clone, Debug, Default)]
pub struct LogsRequestBuilder {
    req: ExportLogsServiceRequest,
}

impl LogsRequestBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ResourceLogs with `service.name` = `service` and a couple of other attributes.
    pub fn resource(mut self, service: &str) -> Self {
        self.req.resource_logs.push(ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", service),
                    kv("host.name", "dt-test-host"),
                    kv("telemetry.sdk.language", "rust"),
                ],
                ..Default::default()
            }),
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            ..Default::default()
        });
        self
    }

    pub fn scope(mut self, name: &str) -> Self {
        let rl = self
            .req
            .resource_logs
            .last_mut()
            .expect("scope() before resource()");
        rl.scope_logs.push(ScopeLogs {
            scope: Some(InstrumentationScope {
                name: name.into(),
                version: "1.0.0".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        self
    }

    pub fn record(mut self, r: impl Into<LogRecord>) -> Self {
        let sl = self
            .req
            .resource_logs
            .last_mut()
            .and_then(|rl| rl.scope_logs.last_mut())
            .expect("record() before scope()");
        sl.log_records.push(r.into());
        self
    }

    pub fn records<I: IntoIterator<Item = R>, R: Into<LogRecord>>(mut self, it: I) -> Self {
        for r in it {
            self = self.record(r);
        }
        self
    }

    pub fn build(self) -> ExportLogsServiceRequest {
        self.req
    }
}

/// The protobuf encoding of `req`.
pub fn encode(req: &ExportLogsServiceRequest) -> Vec<u8> {
    req.encode_to_vec()
}

/// What the test sent in `req`, record by record.
pub fn sent_records(req: &ExportLogsServiceRequest) -> Vec<SentRecord> {
    flatten_sent(req)
}

/// A body string of exactly `len` bytes, distinct per `seed`.
pub fn filler(seed: usize, len: usize) -> String {
    let head = format!("record {seed} ");
    let mut s = String::with_capacity(len);
    s.push_str(&head[..head.len().min(len)]);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut i = seed;
    while s.len() < len {
        s.push(alphabet[i % alphabet.len()] as char);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s
}

/// A request from one service and scope whose encoding is about `target_len` bytes: records of
/// about `record_body` bytes, every `drop_every`-th of them DEBUG (severity 5), the rest INFO
/// (severity 9). Returns the request.
pub fn sized_request(
    service: &str,
    target_len: usize,
    record_body: usize,
    drop_every: usize,
) -> ExportLogsServiceRequest {
    let mut b = LogsRequestBuilder::new().resource(service).scope("bulk");
    let mut i = 0;
    loop {
        let sev = if drop_every > 0 && i % drop_every == 0 {
            5
        } else {
            9
        };
        b = b.record(Rec::new(sev, &filler(i, record_body)).attr("seq", &i.to_string()));
        i += 1;
        if b.req.encoded_len() >= target_len {
            break;
        }
    }
    b.build()
}

/// Hand-written OTLP/JSON for `req` (strings, ints and bools only): what a JSON exporter sends.
pub fn to_otlp_json(req: &ExportLogsServiceRequest) -> Vec<u8> {
    fn js(s: &str) -> String {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o += "\\\"",
                '\\' => o += "\\\\",
                c if (c as u32) < 0x20 => o += &format!("\\u{:04x}", c as u32),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    }
    fn any(v: &Option<AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => format!("{{\"stringValue\":{}}}", js(s)),
            Some(Value::IntValue(i)) => format!("{{\"intValue\":\"{i}\"}}"),
            Some(Value::BoolValue(b)) => format!("{{\"boolValue\":{b}}}"),
            _ => "{}".into(),
        }
    }
    fn kvs(v: &[KeyValue]) -> String {
        let items: Vec<String> = v
            .iter()
            .map(|kv| format!("{{\"key\":{},\"value\":{}}}", js(&kv.key), any(&kv.value)))
            .collect();
        format!("[{}]", items.join(","))
    }
    let mut rls = Vec::new();
    for rl in &req.resource_logs {
        let attrs = rl
            .resource
            .as_ref()
            .map(|r| kvs(&r.attributes))
            .unwrap_or_else(|| "[]".into());
        let mut sls = Vec::new();
        for sl in &rl.scope_logs {
            let name = sl.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            let recs: Vec<String> = sl
                .log_records
                .iter()
                .map(|r| {
                    format!(
                        "{{\"timeUnixNano\":\"{}\",\"severityNumber\":{},\"severityText\":{},\"body\":{},\"attributes\":{}}}",
                        r.time_unix_nano,
                        r.severity_number,
                        js(&r.severity_text),
                        any(&r.body),
                        kvs(&r.attributes)
                    )
                })
                .collect();
            sls.push(format!(
                "{{\"scope\":{{\"name\":{}}},\"logRecords\":[{}]}}",
                js(name),
                recs.join(",")
            ));
        }
        rls.push(format!(
            "{{\"resource\":{{\"attributes\":{attrs}}},\"scopeLogs\":[{}]}}",
            sls.join(",")
        ));
    }
    format!("{{\"resourceLogs\":[{}]}}", rls.join(",")).into_bytes()
}
