//! The bench's OTLP/HTTP requests and rule sets.
//!
//! Every scenario at one request size sends the same pre-encoded requests. Records look like an
//! instrumented service's logs: a string body of 50–300 bytes (uniform), four attributes (three
//! strings and an int), trace context on half of them, a `service.name` resource with the usual
//! SDK attributes, and a mix of severities. Exactly one record in ten is INFO, WARN or ERROR; the
//! other nine are DEBUG or TRACE, at random positions. The drop rule of scenario (d) and of the
//! proxy (f), `severity < INFO`, therefore removes exactly 90% of the records of every request.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// `service.name` of every request.
pub const SERVICE: &str = "checkout";

/// SeverityNumber below which the drop rule removes a record (INFO = 9).
pub const DROP_BELOW: i32 = 9;

/// Distinct requests per size; the sender cycles through them.
pub const VARIANTS: usize = 16;

/// Fixed base timestamp (2024-01-01T00:00:00Z) so requests are deterministic.
const BASE_TIME_NANOS: u64 = 1_704_067_200_000_000_000;

/// A small deterministic PRNG (splitmix64), so that every run builds the same requests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
}

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.into())),
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(string_value(v)),
        ..Default::default()
    }
}

fn int_kv(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn severity_text(n: i32) -> &'static str {
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

const ROUTES: &[&str] = &[
    "/api/v1/cart",
    "/api/v1/cart/items",
    "/api/v1/orders",
    "/api/v1/orders/{id}",
    "/api/v1/payment",
    "/api/v1/shipping/quote",
    "/healthz",
];
const FUNCTIONS: &[&str] = &[
    "checkout::cart::add_item",
    "checkout::orders::place",
    "checkout::payment::authorize",
    "checkout::shipping::quote",
    "checkout::db::pool::acquire",
];
const WORDS: &[&str] = &[
    "request",
    "completed",
    "order",
    "cart",
    "item",
    "user",
    "session",
    "payment",
    "authorized",
    "declined",
    "retry",
    "cache",
    "hit",
    "miss",
    "latency",
    "ms",
    "upstream",
    "pool",
    "connection",
    "acquired",
    "released",
    "shipping",
    "quote",
    "currency",
    "USD",
    "EUR",
    "total",
    "sku",
    "quantity",
    "warehouse",
    "inventory",
    "reserved",
    "timeout",
    "span",
    "trace",
    "db",
    "query",
    "rows",
    "returned",
    "status",
    "ok",
    "handler",
    "started",
    "finished",
    "validated",
];

/// A log body of exactly `len` bytes: a message prefix, then words.
fn body(rng: &mut Rng, seq: u64, len: usize) -> String {
    let mut s = format!(
        "{} {} order={} user={} ",
        rng.pick(&["GET", "POST", "PUT"]),
        rng.pick(ROUTES),
        seq,
        rng.next_u64() % 100_000
    );
    while s.len() < len {
        s.push_str(rng.pick(WORDS));
        s.push(' ');
    }
    s.truncate(len);
    s
}

fn record(rng: &mut Rng, seq: u64, severity_number: i32) -> LogRecord {
    let len = rng.range(50, 300);
    let t = BASE_TIME_NANOS + seq * 1_000_000;
    let mut r = LogRecord {
        time_unix_nano: t,
        observed_time_unix_nano: t + 250_000,
        severity_number,
        severity_text: severity_text(severity_number).into(),
        body: Some(string_value(&body(rng, seq, len))),
        attributes: vec![
            kv("http.route", rng.pick(ROUTES)),
            int_kv(
                "http.status_code",
                rng.pick(&[200, 200, 200, 201, 204, 404, 500]),
            ),
            kv("thread.name", &format!("worker-{}", rng.range(0, 15))),
            kv("code.function", rng.pick(FUNCTIONS)),
        ],
        ..Default::default()
    };
    if rng.next_u64().is_multiple_of(2) {
        r.trace_id = rng.next_u64().to_be_bytes().repeat(2);
        r.span_id = rng.next_u64().to_be_bytes().to_vec();
        r.flags = 1;
    }
    r
}

/// One request of `n` records (a multiple of 10): exactly `n / 10` of them kept by the drop rule.
pub fn request(n: usize, variant: usize) -> ExportLogsServiceRequest {
    assert!(
        n >= 10 && n.is_multiple_of(10),
        "records per request must be a multiple of 10"
    );
    let mut rng = Rng::new(0xd7_bec4 ^ ((n as u64) << 20) ^ variant as u64);
    // Choose the kept positions: one per group of ten, at a random place in the group.
    let records: Vec<LogRecord> = (0..n)
        .map(|i| {
            let seq = (variant * n + i) as u64;
            let keep = i % 10 == (variant + i / 10 * 7) % 10;
            let sev = if keep {
                rng.pick(&[9, 9, 9, 9, 9, 9, 9, 13, 13, 17])
            } else {
                rng.pick(&[5, 5, 5, 1])
            };
            record(&mut rng, seq, sev)
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", SERVICE),
                    kv("service.version", "2.4.1"),
                    kv("service.instance.id", "checkout-7d9f8b6c5-x2vqk"),
                    kv("host.name", "node-17.prod.example.internal"),
                    kv("telemetry.sdk.name", "opentelemetry"),
                    kv("telemetry.sdk.language", "rust"),
                    kv("telemetry.sdk.version", "0.33.0"),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "checkout.service".into(),
                    version: "2.4.1".into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        }],
    }
}

/// Whether the drop rule removes `r`: `severity = "<INFO"`, i.e. SeverityNumber 1..=8.
pub fn dropped_by_rule(r: &LogRecord) -> bool {
    (1..DROP_BELOW).contains(&r.severity_number)
}

/// A whole HTTP/1.1 request to `path` carrying `body`, as an OTLP/HTTP exporter sends it. The
/// bench uses `/v1/logs`; profiling runs also use `/v1/traces`, which dt passes through as
/// `not_logs` right after the head, without corking or walking it.
pub fn http_request(path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:4318\r\nUser-Agent: dt-bench/0.1\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The same request framed as the Node.js SDK sends it: `Transfer-Encoding: chunked` instead of
/// Content-Length (the other headers as in [`http_request`]), the whole body in one data chunk
/// with its size in lowercase hex, then the last chunk `0\r\n\r\n` (no trailers). Returns the
/// bytes and where the last chunk starts. Node.js 20 with exporter-logs-otlp-proto 0.223 sends
/// all of it in one `writev` (strace: head and size line, CRLF, body, CRLF, `0\r\n\r\n`): the
/// socket is corked until the next tick, and `req.end()` comes before it.
pub fn http_request_chunked(path: &str, body: &[u8]) -> (Vec<u8>, usize) {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:4318\r\nUser-Agent: dt-bench/0.1\r\n\
         Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    let split = out.len();
    out.extend_from_slice(LAST_CHUNK);
    (out, split)
}

/// The last chunk and the empty trailer section of a chunked request.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the requests are framed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, head and body in one write (as the Python and Rust SDKs send).
    #[default]
    ContentLength,
    /// `Transfer-Encoding: chunked`, one data chunk, as the Node.js SDK sends: in one write,
    /// see [`http_request_chunked`].
    Chunked,
    /// The same in two writes: the head with the data chunk, then the last chunk (profiling:
    /// dt corks the first write and runs again on the second).
    ChunkedSplit,
}

/// The pre-encoded requests of one size.
pub struct Workload {
    pub records_per_request: usize,
    /// Whole HTTP requests (head and protobuf body).
    pub requests: Vec<Vec<u8>>,
    /// Per request, the writes the sender makes: `requests[i][..splits[i]]`, then the rest if
    /// any (the last chunk, with [`Framing::ChunkedSplit`]).
    pub splits: Vec<usize>,
}

impl Workload {
    pub fn new(n: usize) -> Workload {
        Self::with_path(n, "/v1/logs", Framing::ContentLength)
    }

    pub fn with_path(n: usize, path: &str, framing: Framing) -> Workload {
        let (requests, splits) = (0..VARIANTS)
            .map(|v| {
                let body = request(n, v).encode_to_vec();
                match framing {
                    Framing::ContentLength => {
                        let r = http_request(path, &body);
                        let len = r.len();
                        (r, len)
                    }
                    Framing::Chunked => {
                        let (r, _) = http_request_chunked(path, &body);
                        let len = r.len();
                        (r, len)
                    }
                    Framing::ChunkedSplit => http_request_chunked(path, &body),
                }
            })
            .unzip();
        Workload {
            records_per_request: n,
            requests,
            splits,
        }
    }

    /// Largest request (head and body) in bytes.
    pub fn max_request_bytes(&self) -> usize {
        self.requests.iter().map(Vec::len).max().unwrap_or(0)
    }

    pub fn mean_request_bytes(&self) -> f64 {
        self.requests.iter().map(Vec::len).sum::<usize>() as f64 / self.requests.len() as f64
    }
}

/// Records a request of `n` records keeps after the drop rule.
pub fn kept_per_request(n: usize) -> usize {
    n / 10
}

/// The rule sets of the agent scenarios, as (file name, TOML).
pub mod rules {
    /// The drop rule of scenario (d); the proxy of (f) applies the same.
    pub fn drop_90() -> String {
        "# (d): removes DEBUG and TRACE records, 90% of the bench's records.\n\
         [[rule]]\nname = \"drop-below-info\"\naction = \"drop\"\n[rule.match]\nseverity = \"<INFO\"\n"
            .to_string()
    }

    /// (d)'s drop rule with `[enrich]` (scenario j): every request's Resources get the
    /// sender's pid and the host name (the bench's sender is in no container).
    pub fn drop_90_enriched() -> String {
        format!(
            "# (j): (d), with the sender's identity added to every Resource.\n\
             [enrich]\nresource_attributes = [\"process.pid\", \"host.name\", \"container.id\", \
             \"k8s.pod.uid\"]\n{}",
            drop_90()
        )
    }

    /// (d)'s drop rule, with what it drops kept in a 4 MiB flight recorder (scenario h). The
    /// ring is overwritten all the time: the steady state of a recorder nobody flushes.
    pub fn drop_90_recorded() -> String {
        "# (h): (d), the dropped records kept in a recorder.\n\
         [[recorder]]\nname = \"below-info\"\nsize = \"4MiB\"\n\
         [[rule]]\nname = \"drop-below-info\"\naction = \"drop\"\nrecorder = \"below-info\"\n\
         [rule.match]\nseverity = \"<INFO\"\n"
            .to_string()
    }

    /// (i): 10 count rules as (c), but the nine that match nothing look for realistic needles in
    /// the body, phrases an operator greps for, each starting with its own character (the
    /// needles of (c) all start with `#`, which no body holds, so a scan rarely leaves its start
    /// state); none occurs in the bench's bodies. The last rule matches every record.
    pub fn count_realistic_needles() -> String {
        let needles = [
            "NullPointerException",
            "deadline exceeded",
            "OutOfMemoryError",
            "segfault",
            "permission denied",
            "retry budget exhausted",
            "panic:",
            "SIGKILL",
            "unreachable host",
        ];
        let mut s =
            "# (i): nine count rules with realistic body needles, then one that matches all.\n"
                .to_string();
        for (k, n) in needles.iter().enumerate() {
            s += &format!(
                "\n[[rule]]\nname = \"count-needle-{k}\"\naction = \"count\"\n[rule.match]\nbody_contains = \"{n}\"\n"
            );
        }
        s += &format!(
            "\n[[rule]]\nname = \"count-service\"\naction = \"count\"\n[rule.match]\nservice = \"{}\"\n",
            super::SERVICE
        );
        s
    }

    /// `total` count rules: `total - 1` that match nothing, then one that matches every record.
    /// The non-matching ones cycle through the three kinds of condition (service, body needle,
    /// attribute pair), so each kind has its share of distinct values.
    pub fn count_last_matches(total: usize) -> String {
        let mut s = format!(
            "# {total} count rules: the first {} match no record of the bench, the last matches all.\n",
            total - 1
        );
        for k in 0..total - 1 {
            let cond = match k % 3 {
                0 => format!("service = \"svc-nomatch-{k}\""),
                1 => format!("body_contains = \"#nomatch-{k}#\""),
                _ => format!("attributes = {{ \"http.route\" = \"/nomatch/{k}\" }}"),
            };
            s += &format!(
                "\n[[rule]]\nname = \"count-nomatch-{k}\"\naction = \"count\"\n[rule.match]\n{cond}\n"
            );
        }
        s += &format!(
            "\n[[rule]]\nname = \"count-service\"\naction = \"count\"\n[rule.match]\nservice = \"{}\"\n",
            super::SERVICE
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_in_ten_kept() {
        for n in [10, 100, 1000] {
            for v in 0..VARIANTS {
                let req = request(n, v);
                let recs = &req.resource_logs[0].scope_logs[0].log_records;
                assert_eq!(recs.len(), n);
                let kept = recs.iter().filter(|r| !dropped_by_rule(r)).count();
                assert_eq!(kept, kept_per_request(n), "n {n} variant {v}");
                for r in recs {
                    let AnyValue {
                        value: Some(Value::StringValue(b)),
                    } = r.body.as_ref().unwrap()
                    else {
                        panic!("string body")
                    };
                    assert!((50..=300).contains(&b.len()));
                }
            }
        }
    }
}
