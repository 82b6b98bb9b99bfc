//! The structural verdict of a real protobuf decoder on an `ExportLogsServiceRequest`.
//!
//! prost decoding the OTLP logs schema (as of opentelemetry-proto 0.33: entity refs, event
//! names) with every `string` field declared `bytes`: prost checks UTF-8 in strings, and dt
//! treats strings as bytes, so invalid UTF-8 is not a structural defect. Everything else is
//! prost's own judgement: wire types of known fields, lengths, varints, tags, groups, depth.
//!
//! A request this decoder rejects must pass through dt byte for byte.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct LogsRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
    #[prost(bytes = "vec", tag = "3")]
    pub schema_url: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
    #[prost(message, repeated, tag = "3")]
    pub entity_refs: Vec<EntityRef>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EntityRef {
    #[prost(bytes = "vec", tag = "1")]
    pub schema_url: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub r#type: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub id_keys: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub description_keys: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
    #[prost(bytes = "vec", tag = "3")]
    pub schema_url: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub version: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "4")]
    pub dropped_attributes_count: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub severity_text: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    #[prost(uint32, tag = "7")]
    pub dropped_attributes_count: u32,
    #[prost(fixed32, tag = "8")]
    pub flags: u32,
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "12")]
    pub event_name: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(bytes = "vec", tag = "1")]
    String(Vec<u8>),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    KvList(KeyValueList),
    #[prost(bytes = "vec", tag = "7")]
    Bytes(Vec<u8>),
}

#[derive(Clone, PartialEq, Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `Ok` when prost decodes `body` as an `ExportLogsServiceRequest` (strings as bytes), else
/// prost's error.
pub fn verdict(body: &[u8]) -> Result<(), String> {
    LogsRequest::decode(body)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether prost decodes `body` as an `ExportLogsServiceRequest` (strings as bytes).
pub fn structurally_valid(body: &[u8]) -> bool {
    verdict(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_issue_9_request_is_invalid() {
        // A DEBUG record, then a WARN record whose kvlist body holds a KeyValue whose length
        // runs past its end.
        let body = unhex(
            "0a2e0a150a130a0c736572766963652e6e616d6512030a01731215120710052a030a0164120a100d2a0632040a056162",
        );
        assert!(!structurally_valid(&body));
    }

    #[test]
    fn invalid_utf8_in_a_string_is_structurally_valid() {
        // ResourceLogs { ScopeLogs { LogRecord { body: AnyValue { string_value: ff } } } }
        let body = unhex("0a0a120812062a040a02ff00");
        assert!(structurally_valid(&body), "{:?}", verdict(&body));
        assert!(
            opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::decode(
                &body[..]
            )
            .is_err(),
            "prost with strings rejects it"
        );
    }
}
