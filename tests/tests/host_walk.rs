//! Compiled rule sets driving the shared OTLP walker on the host (`dt_ebpf_common::walk` with
//! the agent's [`HostEnv`]), checked against the tests' rule model (`dt_tests::model`; README,
//! "Evaluation, per record"). No kernel.

use std::path::PathBuf;

use dt_agent::rules::{Compiled, Diagnostic, HostEnv, SlotTable, compile, load_sources};
use dt_ebpf_common::walk::{Walk, apply_start, apply_step, run};
use dt_ebpf_common::wire::SliceSource;
use dt_tests::host_walk::VecEditor;
use dt_tests::model::{Action, End, Facts, RuleSpec, evaluate_record, rules_toml};
use dt_tests::record::log_record_field_len;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// A small deterministic PRNG (xorshift64*), so the random test replays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`%.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (non-empty).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Loads and compiles one in-memory rule file with a fresh slot table.
fn build(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let defs = load_sources(&[(PathBuf::from("r.toml"), text.to_string())])?;
    compile(&defs, &mut SlotTable::new())
}

fn test_rules() -> Vec<RuleSpec> {
    // Conditions at the size limits: a 64-byte key, a 128-byte value, a 128-byte service.
    let (long_key, long_value) = ("k".repeat(64), "v".repeat(128));
    let long_service = "s".repeat(128);
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::count("count-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::count("count-heck").body_contains("heck"),
        RuleSpec::drop("drop-health").body_contains("healthcheck"),
        RuleSpec::count("count-checkout-warn")
            .service("checkout")
            .severity(">=WARN", 13..=24),
        RuleSpec::drop("drop-probe")
            .attribute("http.route", "/healthz")
            .attribute("http.method", "GET"),
        RuleSpec::count("count-unspecified").severity("UNSPECIFIED", 0..=0),
        RuleSpec::drop("drop-cart-retry")
            .service("cart")
            .body_contains("retry")
            .severity("debug .. info", 5..=12),
        RuleSpec::drop("drop-dev-nine")
            .severity_value("9", 9..=9)
            .attribute("env", "dev"),
        RuleSpec::count("count-ready")
            .body_contains("ready")
            .severity("3..14", 3..=14),
        RuleSpec::count("count-empty-route").attribute("http.route", ""),
        RuleSpec::drop("drop-fatal").severity(">ERROR", 21..=24),
        RuleSpec::count("count-long-attr").attribute(&long_key, &long_value),
        RuleSpec::count("count-long-service").service(&long_service),
        RuleSpec::count("count-rest"),
    ]
}

/// Per rule `(matched, dropped)`, and which records are kept, per the model.
fn expected(rules: &[RuleSpec], records: &[Facts]) -> (Vec<(u32, u32)>, Vec<bool>) {
    let mut counts = vec![(0, 0); rules.len()];
    let mut kept = Vec::new();
    for rec in records {
        let e = evaluate_record(rules, rec);
        for &i in &e.matched {
            counts[i].0 += 1;
        }
        match e.end {
            End::Kept => kept.push(true),
            End::Dropped(i) => {
                counts[i].1 += 1;
                kept.push(false);
            }
            End::Decided(i) => panic!("rule {} samples or rate-limits", rules[i].name),
        }
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

/// What the rules see of a record under a resource with `service`.
fn rec_of(service: &Option<String>, r: &LogRecord) -> Facts {
    let as_string = |v: &Option<AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    Facts {
        service: service.clone(),
        severity: r.severity_number,
        body: as_string(&r.body),
        attributes: r
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

/// A random request, and what the rules see of its records, in order.
fn random_request(rng: &mut Rng) -> (ExportLogsServiceRequest, Vec<Facts>) {
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

/// Walks `bytes` with `compiled`; returns the walk and the edited bytes.
fn walk(compiled: &Compiled, bytes: &[u8]) -> (Box<Walk>, Vec<u8>) {
    // SAFETY: `Walk` is plain old data (integers and arrays of them); all zeroes is valid.
    let mut walk = Box::new(unsafe { std::mem::zeroed::<Walk>() });
    walk.start(0, bytes.len() as u32, 0, 0);
    let mut env = HostEnv::new(compiled);
    run(&mut walk, &mut SliceSource(bytes), &mut env).expect("walk");
    // Field by field, the walk must come to exactly the same.
    dt_tests::host_walk::both_ways(compiled, bytes).unwrap_or_else(|e| panic!("{e}"));
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
            .map(|(r, _)| log_record_field_len(r))
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
            rule.action != Action::Drop || *dropped > 0,
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

/// A protobuf field of wire type 2: `tag`, the length, `data`.
fn len_field(tag: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    prost::encoding::encode_varint(data.len() as u64, &mut out);
    out.extend_from_slice(data);
    out
}

/// The most work one request can give the apply step, near the request bound: 256 records,
/// each with four map bodies (a repeated field; each replaced whole by `mask_body`) and four
/// attributes removed. The plan fits the kernel's `bpf_loop` bound (the host walk asserts it,
/// as the kernel's loop would stop short), and every body leaves as a string of `*`.
#[test]
fn the_largest_redaction_plan_fits_the_apply_bound() {
    let compiled = dt_tests::host_walk::compile_rules(
        "[[rule]]\nname = \"scrub\"\naction = \"redact\"\nremove_attributes = [\"a\"]\n\
         mask_body = true\n",
    );
    let map = AnyValue {
        value: Some(Value::KvlistValue(
            opentelemetry_proto::tonic::common::v1::KeyValueList {
                values: (0..11)
                    .map(|i| KeyValue {
                        key: format!("field{i}"),
                        value: string(&"secret".repeat(5)),
                        ..KeyValue::default()
                    })
                    .collect(),
            },
        )),
    }
    .encode_to_vec();
    let record = LogRecord {
        severity_number: 9,
        attributes: (0..4)
            .map(|_| KeyValue {
                key: "a".into(),
                value: string("x"),
                ..KeyValue::default()
            })
            .collect(),
        ..LogRecord::default()
    };
    let mut rec = record.encode_to_vec();
    for _ in 0..4 {
        rec.extend(len_field(0x2a, &map));
    }
    let records: Vec<u8> = (0..256).flat_map(|_| len_field(0x12, &rec)).collect();
    let body = len_field(0x0a, &len_field(0x12, &records));
    assert!(
        body.len() > 400 * 1024 && body.len() < 512 * 1024 - 300,
        "{} bytes",
        body.len()
    );
    for fast in [false, true] {
        let (out, _, _) = dt_tests::host_walk::walk_body(&compiled, &body, fast);
        assert!(out.verdict.starts_with("Ok"), "{}", out.verdict);
        let req = ExportLogsServiceRequest::decode(&out.edited[..]).expect("decodes");
        let got = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(got.len(), 256);
        for r in got {
            assert!(r.attributes.is_empty());
            match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(Value::StringValue(s)) => {
                    assert!(!s.is_empty() && s.bytes().all(|c| c == b'*'))
                }
                other => panic!("body {other:?}"),
            }
        }
    }
}

/// Needles that begin with bytes rare in text: the body scan passes over the bytes that cannot
/// begin one, 8 at a time when at most four bytes can (`NEED_SCAN_WORDS`), else one at a time
/// (`NEED_SCAN_SKIP`). Both come to what a scan of every byte comes to, and to the model, on
/// bodies full of the needles' first bytes and near misses, across the 64-byte chunks.
#[test]
fn body_scans_that_skip_bytes_agree_with_scanning_every_byte() {
    use dt_ebpf_common::{NEED_SCAN_SKIP, NEED_SCAN_WORDS};
    use dt_tests::host_walk::walk_body;
    use dt_tests::model::contains;
    let sets: [(&[&str], bool); 4] = [
        (&["#oops"], true),
        (&["#oops", "[warn]", "#"], true),
        (&["#!", "[w", "{\"k", "\u{e9}t\u{e9}"], true),
        // Five first bytes: one at a time.
        (&["#!", "[w", "{\"k", "\u{e9}t\u{e9}", "~~"], false),
    ];
    let pieces = [
        "#",
        "#o",
        "#oop",
        "#oops",
        "#!",
        "[",
        "[w",
        "[warn",
        "[warn]",
        "{",
        "{\"",
        "{\"k",
        "~",
        "~~",
        "\u{e9}",
        "\u{e9}t",
        "t\u{e9}",
        "x",
        "plain words ",
        "        ",
        "0123456",
    ];
    let mut rng = Rng::new(0x5ca9);
    for (needles, words) in sets {
        let text: String = needles
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "[[rule]]\nname = \"n{i}\"\naction = \"count\"\n[rule.match]\nbody_contains = {n:?}\n\n"
                )
            })
            .collect();
        let words_on = build(&text).unwrap_or_else(|e| panic!("{e:#?}"));
        let needs = words_on.ruleset.needs;
        assert_ne!(needs & NEED_SCAN_SKIP, 0, "{needles:?}");
        assert_eq!(needs & NEED_SCAN_WORDS != 0, words, "{needles:?}");
        let mut bytewise = words_on.clone();
        bytewise.ruleset.needs &= !NEED_SCAN_WORDS;
        let mut every = words_on.clone();
        every.ruleset.needs &= !(NEED_SCAN_WORDS | NEED_SCAN_SKIP);
        for round in 0..400 {
            let most = if rng.chance(50) { 12 } else { 80 };
            let n = rng.below(most) as usize;
            let body: String = (0..n).map(|_| rng.pick(&pieces)).collect();
            let request = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![record(9, string(&body), Vec::new())],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let bytes = request.encode_to_vec();
            let want: Vec<u32> = needles
                .iter()
                .map(|n| contains(body.as_bytes(), n.as_bytes()) as u32)
                .collect();
            for (how, compiled) in [
                ("8 at a time", &words_on),
                ("one at a time", &bytewise),
                ("every byte", &every),
            ] {
                for fast in [true, false] {
                    let (o, _, _) = walk_body(compiled, &bytes, fast);
                    let got: Vec<u32> = o.acc.iter().map(|a| a.0).collect();
                    assert_eq!(
                        got, want,
                        "{how} (fast path {fast}), round {round}, needles {needles:?}, body {body:?}"
                    );
                }
            }
        }
    }
}
