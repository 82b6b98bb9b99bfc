//! The flat view of a log record that tests compare: what was sent and what arrived.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

use crate::model::{AttrValue, RecordFacts};
use crate::oracle;

/// One log record with its resource's `service.name` and its scope's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReceivedRecord {
    /// The resource's `service.name` (empty when absent).
    pub service: String,
    /// The instrumentation scope's name (empty when absent).
    pub scope: String,
    pub severity_number: i32,
    /// The body when it is a string.
    pub body: Option<String>,
    /// Attributes in order; non-string values are rendered as `<type>:<value>`.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedRecord {
    /// The attribute `key`, if present (last one wins).
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A record as sent, with the size of its whole encoding inside ScopeLogs (tag, length prefix
/// and message): what `dropped_bytes` counts when it is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentRecord {
    pub record: ReceivedRecord,
    pub field_len: u64,
}

/// Length of a varint.
pub fn varint_len(mut v: u64) -> u64 {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Size of `ScopeLogs.log_records` field #2 holding `rec`: tag (1 byte), length, message.
pub fn log_record_field_len(rec: &LogRecord) -> u64 {
    let n = rec.encoded_len() as u64;
    1 + varint_len(n) + n
}

/// Renders an attribute value.
pub fn render_value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => "empty:".into(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => format!("bool:{b}"),
        Some(Value::IntValue(i)) => format!("int:{i}"),
        Some(Value::DoubleValue(d)) => format!("double:{d}"),
        Some(Value::BytesValue(b)) => format!("bytes:{b:02x?}"),
        Some(other) => format!("other:{other:?}"),
    }
}

/// Converts one proto LogRecord (with its service and scope).
pub fn to_received(service: &str, scope: &str, r: &LogRecord) -> ReceivedRecord {
    let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    ReceivedRecord {
        service: service.to_owned(),
        scope: scope.to_owned(),
        severity_number: r.severity_number,
        body,
        attributes: r
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), render_value(kv.value.as_ref())))
            .collect(),
    }
}

/// Every record of `req`, in wire order, with its field length.
pub fn flatten_sent(req: &ExportLogsServiceRequest) -> Vec<SentRecord> {
    let mut out = Vec::new();
    for rl in &req.resource_logs {
        let service = rl
            .resource
            .as_ref()
            .and_then(|r| {
                r.attributes
                    .iter()
                    .rev()
                    .find(|kv| kv.key == "service.name")
            })
            .map(|kv| render_value(kv.value.as_ref()))
            .unwrap_or_default();
        for sl in &rl.scope_logs {
            let scope = sl
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for r in &sl.log_records {
                out.push(SentRecord {
                    record: to_received(&service, &scope, r),
                    field_len: log_record_field_len(r),
                });
            }
        }
    }
    out
}

/// Every record of `req`, in wire order.
pub fn flatten(req: &ExportLogsServiceRequest) -> Vec<ReceivedRecord> {
    flatten_sent(req).into_iter().map(|s| s.record).collect()
}

/// What the rules see of every record of an encoded `ExportLogsServiceRequest`, in wire order,
/// decoded as prost decodes it (merge semantics: the last of a repeated singular field wins,
/// repeated messages merge) with every string as the bytes sent. `None` when the body does not
/// decode ([`crate::oracle`]).
pub fn body_facts(body: &[u8]) -> Option<Vec<RecordFacts>> {
    fn value(v: Option<&oracle::AnyValue>) -> AttrValue {
        match v.and_then(|v| v.value.as_ref()) {
            Some(oracle::Value::String(s)) => AttrValue::Str(s.clone()),
            Some(oracle::Value::Int(i)) => AttrValue::Int(*i),
            Some(oracle::Value::Bool(b)) => AttrValue::Bool(*b),
            _ => AttrValue::Other,
        }
    }
    let req = oracle::LogsRequest::decode(body).ok()?;
    let mut out = Vec::new();
    for rl in &req.resource_logs {
        let service = rl
            .resource
            .as_ref()
            .and_then(|r| {
                r.attributes
                    .iter()
                    .rev()
                    .find(|kv| kv.key == b"service.name")
            })
            .and_then(|kv| match value(kv.value.as_ref()) {
                AttrValue::Str(s) => Some(s),
                _ => None,
            });
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                out.push(RecordFacts {
                    service: service.clone(),
                    severity: r.severity_number,
                    body: match value(r.body.as_ref()) {
                        AttrValue::Str(s) => Some(s),
                        _ => None,
                    },
                    event_name: (!r.event_name.is_empty()).then(|| r.event_name.clone()),
                    attributes: r
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
    Some(out)
}

/// What the rules see of every record of `req`, in wire order (see [`body_facts`]): with event
/// names and typed attribute values, which [`ReceivedRecord`] does not keep.
pub fn request_facts(req: &ExportLogsServiceRequest) -> Vec<RecordFacts> {
    body_facts(&req.encode_to_vec()).expect("prost's own encoding decodes")
}

/// Asserts `got` and `expected` hold the same records as multisets, with a readable diff.
pub fn assert_same_records(what: &str, expected: &[ReceivedRecord], got: &[ReceivedRecord]) {
    let mut want: BTreeMap<&ReceivedRecord, i64> = BTreeMap::new();
    for r in expected {
        *want.entry(r).or_default() += 1;
    }
    for r in got {
        *want.entry(r).or_default() -= 1;
    }
    let missing: Vec<_> = want.iter().filter(|(_, n)| **n > 0).collect();
    let extra: Vec<_> = want.iter().filter(|(_, n)| **n < 0).collect();
    if missing.is_empty() && extra.is_empty() {
        return;
    }
    let mut msg = format!(
        "{what}: expected {} records, got {}; {} distinct missing, {} distinct unexpected\n",
        expected.len(),
        got.len(),
        missing.len(),
        extra.len()
    );
    for (r, n) in missing.iter().take(10) {
        msg += &format!("  missing x{n}: {r:?}\n");
    }
    for (r, n) in extra.iter().take(10) {
        msg += &format!("  unexpected x{}: {r:?}\n", -**n);
    }
    panic!("{msg}");
}

/// The wire size (tag, length prefix and body) of every LogRecord field in an encoded
/// `ExportLogsServiceRequest`, in order, as the sender wrote them. A real encoder may not write
/// what prost would (the Node.js SDK writes zero-valued fields), and dt counts the bytes it
/// actually removes. `None` for a body that is not a plain encoding of the three levels.
pub fn wire_record_field_lens(body: &[u8]) -> Option<Vec<u64>> {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let x = *b.get(*at)?;
            *at += 1;
            v |= ((x & 0x7f) as u64) << (7 * i);
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }
    /// Calls `f(field, start, end, field_start)` for each length-delimited field of `b[from..to]`;
    /// skips the others.
    fn fields(
        b: &[u8],
        from: usize,
        to: usize,
        f: &mut dyn FnMut(u64, usize, usize, usize) -> Option<()>,
    ) -> Option<()> {
        let mut at = from;
        while at < to {
            let field_start = at;
            let tag = varint(b, &mut at)?;
            match tag & 7 {
                0 => {
                    varint(b, &mut at)?;
                }
                1 => at += 8,
                5 => at += 4,
                2 => {
                    let len = varint(b, &mut at)? as usize;
                    f(tag >> 3, at, at + len, field_start)?;
                    at += len;
                }
                _ => return None,
            }
        }
        (at == to).then_some(())
    }
    let mut out = Vec::new();
    fields(body, 0, body.len(), &mut |n, s, e, _| {
        if n != 1 {
            return Some(());
        }
        fields(body, s, e, &mut |n, s, e, _| {
            if n != 2 {
                return Some(());
            }
            fields(body, s, e, &mut |n, _s, e, fs| {
                if n == 2 {
                    out.push((e - fs) as u64);
                }
                Some(())
            })
        })
    })?;
    Some(out)
}
