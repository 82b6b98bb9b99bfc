//! Compiled rule sets driving the shared OTLP walker on the host, checked against expectations
//! computed directly from the contract (INTERFACE.md, "Evaluation").

use dt_ebpf_common::walk::{Editor, Walk, apply_start, apply_step, run};
use dt_ebpf_common::wire::SliceSource;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{Rng, build};
use crate::rules::{Compiled, HostEnv};

/// A log record as the contract sees it.
#[derive(Clone, Debug)]
struct Rec {
    /// The resource's `service.name`, when it is a string.
    service: Option<String>,
    severity: i32,
    /// The body, when it is a string.
    body: Option<String>,
    /// The record's string attributes.
    attrs: Vec<(String, String)>,
}

impl Rec {
    fn severity_in(&self, lo: i32, hi: i32) -> bool {
        (lo..=hi).contains(&self.severity)
    }

    fn service_is(&self, service: &str) -> bool {
        self.service.as_deref() == Some(service)
    }

    fn body_contains(&self, needle: &str) -> bool {
        self.body.as_deref().is_some_and(|b| b.contains(needle))
    }

    fn has_attr(&self, key: &str, value: &str) -> bool {
        self.attrs.iter().any(|(k, v)| k == key && v == value)
    }
}

/// A rule: its name, action, `[rule.match]` body, and the contract's meaning of that match.
struct TestRule {
    name: &'static str,
    action: &'static str,
    conditions: String,
    matches: fn(&Rec) -> bool,
}

fn test_rules() -> Vec<TestRule> {
    let rule = |name, action, conditions: &str, matches| TestRule {
        name,
        action,
        conditions: conditions.to_string(),
        matches,
    };
    // Conditions at the size limits: a 64-byte key, a 128-byte value, a 128-byte service.
    let long_attr_rule = &format!(
        "attributes = {{ {} = \"{}\" }}",
        "k".repeat(64),
        "v".repeat(128)
    );
    let long_service_rule = &format!("service = \"{}\"", "s".repeat(128));
    vec![
        rule("count-all", "count", "", |_| true),
        rule("count-debug", "count", "severity = \"<=DEBUG\"", |r| {
            r.severity_in(1, 8)
        }),
        rule("count-heck", "count", "body_contains = \"heck\"", |r| {
            r.body_contains("heck")
        }),
        rule(
            "drop-health",
            "drop",
            "body_contains = \"healthcheck\"",
            |r| r.body_contains("healthcheck"),
        ),
        rule(
            "count-checkout-warn",
            "count",
            "service = \"checkout\"\nseverity = \">=WARN\"",
            |r| r.service_is("checkout") && r.severity_in(13, 24),
        ),
        rule(
            "drop-probe",
            "drop",
            "attributes = { \"http.route\" = \"/healthz\", \"http.method\" = \"GET\" }",
            |r| r.has_attr("http.route", "/healthz") && r.has_attr("http.method", "GET"),
        ),
        rule(
            "count-unspecified",
            "count",
            "severity = \"UNSPECIFIED\"",
            |r| r.severity == 0,
        ),
        rule(
            "drop-cart-retry",
            "drop",
            "service = \"cart\"\nbody_contains = \"retry\"\nseverity = \"debug .. info\"",
            |r| r.service_is("cart") && r.body_contains("retry") && r.severity_in(5, 12),
        ),
        rule(
            "drop-dev-nine",
            "drop",
            "severity = 9\nattributes = { env = \"dev\" }",
            |r| r.severity == 9 && r.has_attr("env", "dev"),
        ),
        rule(
            "count-ready",
            "count",
            "body_contains = \"ready\"\nseverity = \"3..14\"",
            |r| r.body_contains("ready") && r.severity_in(3, 14),
        ),
        rule(
            "count-empty-route",
            "count",
            "attributes = { \"http.route\" = \"\" }",
            |r| r.has_attr("http.route", ""),
        ),
        rule("drop-fatal", "drop", "severity = \">ERROR\"", |r| {
            r.severity_in(21, 24)
        }),
        rule("count-long-attr", "count", long_attr_rule, |r| {
            r.has_attr(&"k".repeat(64), &"v".repeat(128))
        }),
        rule("count-long-service", "count", long_service_rule, |r| {
            r.service_is(&"s".repeat(128))
        }),
        rule("count-rest", "count", "", |_| true),
    ]
}

fn rules_toml(rules: &[TestRule]) -> String {
    rules
        .iter()
        .map(|r| {
            format!(
                "[[rule]]\nname = \"{}\"\naction = \"{}\"\n[rule.match]\n{}\n\n",
                r.name, r.action, r.conditions
            )
        })
        .collect()
}

/// Per rule `(matched, dropped)`, and which records are kept, per the contract.
fn expected(rules: &[TestRule], records: &[Rec]) -> (Vec<(u32, u32)>, Vec<bool>) {
    let mut counts = vec![(0, 0); rules.len()];
    let mut kept = Vec::new();
    for rec in records {
        let mut keep = true;
        for (i, rule) in rules.iter().enumerate() {
            if (rule.matches)(rec) {
                counts[i].0 += 1;
                if rule.action == "drop" {
                    counts[i].1 += 1;
                    keep = false;
                    break;
                }
            }
        }
        kept.push(keep);
    }
    (counts, kept)
}

fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::StringValue(s.to_string())),
    })
}

fn int(i: i64) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::IntValue(i)),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn record(severity: i32, body: Option<AnyValue>, attributes: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        severity_number: severity,
        body,
        attributes,
        ..Default::default()
    }
}

/// The contract's view of a record under a resource with `service`.
fn rec_of(service: &Option<String>, r: &LogRecord) -> Rec {
    let as_string = |v: &Option<AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    Rec {
        service: service.clone(),
        severity: r.severity_number,
        body: as_string(&r.body),
        attrs: r
            .attributes
            .iter()
            .filter_map(|a| Some((a.key.clone(), as_string(&a.value)?)))
            .collect(),
    }
}

const BODIES: &[&str] = &[
    "GET /healthz healthcheck ok",
    "retry after backoff",
    "checking the heck",
    "service ready",
    "",
    "plain message",
    "healthcheck",
    "he said retry, then healthcheck; ready",
    "hhealthcheckk",
    "re-try ready-ish",
];

/// A random string body, mostly made of needle fragments.
fn random_body(rng: &mut Rng) -> String {
    if rng.chance(60) {
        return rng.pick(BODIES).to_string();
    }
    let pieces = [
        "heal", "th", "check", "he", "ck", "re", "try", "ready", " ", "x", "\u{e9}", "filler-",
    ];
    // Up to ~300 bytes, so scans cross the walker's 64-byte chunks with needles straddling them.
    let n = if rng.chance(30) {
        rng.below(60)
    } else {
        rng.below(8)
    } as usize;
    (0..n).map(|_| rng.pick(&pieces)).collect()
}

fn random_record(rng: &mut Rng) -> LogRecord {
    const SEVERITIES: &[i32] = &[
        0, 1, 3, 4, 5, 8, 9, 10, 12, 13, 14, 16, 17, 20, 21, 24, 25, 99, -1,
    ];
    let severity = rng.pick(SEVERITIES);
    let body = match rng.below(10) {
        0 => None,
        1 => int(42),
        _ => string(&random_body(rng)),
    };
    let mut attributes = Vec::new();
    let pools: [(&str, &[&str]); 4] = [
        ("http.route", &["/healthz", "/api", ""]),
        ("http.method", &["GET", "POST"]),
        ("env", &["dev", "prod"]),
        ("user", &["alice", "bob"]),
    ];
    for (key, values) in pools {
        if rng.chance(50) {
            let value = if rng.chance(10) {
                int(1)
            } else {
                string(rng.pick(values))
            };
            attributes.push(kv(key, value));
        }
    }
    if rng.chance(15) {
        // At the limits, and one byte over (which cannot match).
        let key = "k".repeat(64 + rng.below(2) as usize);
        let value = "v".repeat(127 + rng.below(3) as usize);
        attributes.push(kv(&key, string(&value)));
    }
    // Attribute order must not matter.
    if rng.chance(50) {
        attributes.reverse();
    }
    record(severity, body, attributes)
}

/// A random request, and the contract's view of its records in order.
fn random_request(rng: &mut Rng) -> (ExportLogsServiceRequest, Vec<Rec>) {
    let mut recs = Vec::new();
    let mut resource_logs = Vec::new();
    for _ in 0..1 + rng.below(3) {
        // Zero to two service.name attributes among others: the last one wins.
        let mut attributes = vec![kv("host.name", string("web-1"))];
        for _ in 0..rng.below(3) {
            let value = match rng.below(6) {
                0 => int(7),
                1 => string(&"s".repeat(127 + rng.below(3) as usize)),
                _ => string(rng.pick(&["checkout", "cart", "payments", "cartx"])),
            };
            let at = rng.below(attributes.len() as u64 + 1) as usize;
            attributes.insert(at, kv("service.name", value));
        }
        let service = attributes
            .iter()
            .rev()
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let resource = rng.chance(90).then_some(Resource {
            attributes,
            ..Default::default()
        });
        let service = if resource.is_some() { service } else { None };
        let mut scope_logs = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let log_records: Vec<LogRecord> =
                (0..rng.below(6)).map(|_| random_record(rng)).collect();
            recs.extend(log_records.iter().map(|r| rec_of(&service, r)));
            scope_logs.push(ScopeLogs {
                log_records,
                ..Default::default()
            });
        }
        resource_logs.push(ResourceLogs {
            resource,
            scope_logs,
            ..Default::default()
        });
    }
    (ExportLogsServiceRequest { resource_logs }, recs)
}

/// Encodes `request`, writing each ResourceLogs' `resource` after its ScopeLogs when `rng`
/// says so (fields in any order are valid protobuf, and the walker must handle it).
fn encode_shuffled(request: &ExportLogsServiceRequest, rng: &mut Rng) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, message};
    let mut out = Vec::new();
    for rl in &request.resource_logs {
        let resource_last = rng.chance(50);
        let mut inner = Vec::new();
        if let (false, Some(resource)) = (resource_last, &rl.resource) {
            message::encode(1, resource, &mut inner);
        }
        for scope in &rl.scope_logs {
            message::encode(2, scope, &mut inner);
        }
        if let (true, Some(resource)) = (resource_last, &rl.resource) {
            message::encode(1, resource, &mut inner);
        }
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(inner.len() as u64, &mut out);
        out.extend(inner);
    }
    out
}

/// Applies the walk's edits to a copy of the request bytes.
struct VecEditor(Vec<u8>);

impl Editor for VecEditor {
    fn pop(&mut self, off: u32, len: u32) -> bool {
        let (off, len) = (off as usize, len as usize);
        self.0.drain(off..off + len);
        true
    }

    fn reach(&mut self, off: u32, len: u32) -> bool {
        (off as usize + len as usize) <= self.0.len()
    }

    fn put(&mut self, off: u32, b: u8) {
        self.0[off as usize] = b;
    }
}

/// Walks `bytes` with `compiled`; returns the walk and the edited bytes.
fn walk(compiled: &Compiled, bytes: &[u8]) -> (Box<Walk>, Vec<u8>) {
    // SAFETY: `Walk` is plain old data (integers and arrays of them); all zeroes is valid.
    let mut walk = Box::new(unsafe { std::mem::zeroed::<Walk>() });
    walk.start(0, bytes.len() as u32, 0, 0);
    let mut env = HostEnv::new(compiled);
    run(&mut walk, &mut SliceSource(bytes), &mut env).expect("walk");
    let mut editor = VecEditor(bytes.to_vec());
    apply_start(&mut walk);
    while apply_step(&mut walk, &mut editor) {}
    (walk, editor.0)
}

fn all_records(req: &ExportLogsServiceRequest) -> Vec<LogRecord> {
    req.resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| sl.log_records.iter().cloned())
        .collect()
}

/// Bytes a dropped record takes in its ScopeLogs: tag, length prefix and body.
fn record_field_len(r: &LogRecord) -> u64 {
    let len = r.encoded_len();
    (1 + prost::encoding::encoded_len_varint(len as u64) + len) as u64
}

#[test]
fn walker_with_compiled_rules_follows_the_contract() {
    let rules = test_rules();
    let compiled = build(&rules_toml(&rules)).unwrap_or_else(|e| panic!("{e:#?}"));
    let mut rng = Rng::new(0xd7);
    let mut totals = vec![(0, 0); rules.len()];
    for round in 0..3000 {
        let (request, recs) = random_request(&mut rng);
        let bytes = encode_shuffled(&request, &mut rng);
        let (walk, edited) = walk(&compiled, &bytes);
        let (want, kept) = expected(&rules, &recs);
        let context = || format!("round {round}: {request:#?}");

        assert_eq!(walk.records as usize, recs.len(), "{}", context());
        for (i, rule) in rules.iter().enumerate() {
            let got = (walk.acc[i].matched, walk.acc[i].dropped);
            assert_eq!(got, want[i], "rule {} in {}", rule.name, context());
            totals[i].0 += got.0;
            totals[i].1 += got.1;
        }

        let originals = all_records(&request);
        let dropped_bytes: u64 = originals
            .iter()
            .zip(&kept)
            .filter(|&(_, &keep)| !keep)
            .map(|(r, _)| record_field_len(r))
            .sum();
        let acc_bytes: u64 = walk.acc.iter().map(|a| a.dropped_bytes).sum();
        assert_eq!(acc_bytes, dropped_bytes, "{}", context());

        let after =
            ExportLogsServiceRequest::decode(edited.as_slice()).expect("edited request decodes");
        let want_kept: Vec<LogRecord> = originals
            .into_iter()
            .zip(&kept)
            .filter_map(|(r, &keep)| keep.then_some(r))
            .collect();
        assert_eq!(all_records(&after), want_kept, "{}", context());
    }
    // Every rule both matched and (for drops) dropped something, so every path was exercised.
    for (rule, (matched, dropped)) in rules.iter().zip(&totals) {
        assert!(*matched > 0, "{} never matched", rule.name);
        assert!(
            rule.action != "drop" || *dropped > 0,
            "{} never dropped",
            rule.name
        );
    }
}

#[test]
fn walker_on_a_hand_built_request() {
    let text = r#"
[[rule]]
name = "debug"
action = "count"
match = { severity = "<INFO" }

[[rule]]
name = "health"
action = "drop"
match = { service = "checkout", body_contains = "healthz" }

[[rule]]
name = "after"
action = "count"
"#;
    let compiled = build(text).unwrap();
    let resource = |service: &str| {
        Some(Resource {
            attributes: vec![kv("service.name", string(service))],
            ..Default::default()
        })
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![
            ResourceLogs {
                resource: resource("checkout"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        record(5, string("GET /healthz"), vec![]),
                        record(9, string("GET /healthz"), vec![]),
                        record(9, string("GET /api"), vec![]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceLogs {
                resource: resource("cart"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record(1, string("GET /healthz"), vec![])],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    let bytes = request.encode_to_vec();
    let (walk, edited) = walk(&compiled, &bytes);
    let got: Vec<_> = (0..3)
        .map(|i| (walk.acc[i].matched, walk.acc[i].dropped))
        .collect();
    assert_eq!(got, [(2, 0), (2, 2), (2, 0)]);
    let after = ExportLogsServiceRequest::decode(edited.as_slice()).unwrap();
    let bodies: Vec<_> = all_records(&after).into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, [string("GET /api"), string("GET /healthz")]);
}

#[test]
fn sample_keeps_one_in_n_and_redact_edits_kept_records() {
    let text = "[[rule]]\nname = \"redact\"\naction = \"redact\"\nremove_attributes = [\"secret\", \"token\"]\nmask_body = true\n[rule.match]\nseverity = \">=ERROR\"\n\
                [[rule]]\nname = \"sample\"\naction = \"sample\"\nkeep_one_in = 3\n[rule.match]\nseverity = \"INFO\"\n";
    let compiled = build(text).expect("rules compile");
    let attrs = || {
        vec![
            kv("secret", string("s3cr3t")),
            kv("keep", string("k")),
            kv("token", int(7)),
        ]
    };
    let records: Vec<LogRecord> = (0..9)
        .map(|i| record([9, 17, 17][i % 3], string(&format!("body {i}")), attrs()))
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: None,
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let bytes = request.encode_to_vec();
    let (walk, out) = walk(&compiled, &bytes);
    let got = ExportLogsServiceRequest::decode(&out[..]).expect("edited request decodes");
    let got = all_records(&got);
    // INFO records 0, 3, 6 are matches 0, 1, 2 of the sample rule: only the first is kept.
    assert_eq!(
        (walk.acc[1].matched, walk.acc[1].kept, walk.acc[1].dropped),
        (3, 1, 2)
    );
    assert_eq!((walk.acc[0].matched, walk.acc[0].redacted), (6, 6));
    assert_eq!(got.len(), 7);
    for r in &got {
        let keys: Vec<&str> = r.attributes.iter().map(|a| a.key.as_str()).collect();
        if r.severity_number == 17 {
            assert_eq!(keys, ["keep"]);
            match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(Value::StringValue(s)) => assert!(s.bytes().all(|c| c == b'*'), "{s}"),
                other => panic!("body {other:?}"),
            }
        } else {
            assert_eq!(keys, ["secret", "keep", "token"]);
        }
    }
}
