//! `event_name` and typed `attributes` conditions (README, "Matching and shaping") through the
//! kernel, with records sent by three real OpenTelemetry exporters: Rust (opentelemetry-otlp
//! 0.33), Python and Node.js (chunked), all HTTP/protobuf. Each SDK sets `event_name` (LogRecord
//! field 12) and encodes int and bool attributes as `int_value` and `bool_value`. Count rules
//! with `group_by` count by value, in `stats` and on the Prometheus endpoint.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use dt_agent::metrics::{StatsSource, bind_metrics, serve_prometheus};
use dt_tests::{
    ExportMode, ExportPlan, PlannedRecord, ReceivedRecord, Receiver, TempRules, WAIT,
    assert_no_passthrough, export_with_node, export_with_python, export_with_real_exporter,
    kernel_or_skip, node_or_skip, python_or_skip, start_agent, stats_of,
};

const RULES: &str = r#"
[[rule]]
name = "count-payment-failed"
action = "count"
[rule.match]
event_name = "payment.failed"

[[rule]]
name = "count-status-503"
action = "count"
[rule.match]
attributes = { "http.status_code" = 503 }

[[rule]]
name = "count-status-503-as-string"
action = "count"
[rule.match]
attributes = { "http.status_code" = "503" }

[[rule]]
name = "count-code-503-string"
action = "count"
[rule.match]
attributes = { "code" = "503" }

[[rule]]
name = "count-code-503-as-int"
action = "count"
[rule.match]
attributes = { "code" = 503 }

[[rule]]
name = "count-retry"
action = "count"
[rule.match]
attributes = { "retry" = true }

[[rule]]
name = "count-retry-as-int"
action = "count"
[rule.match]
attributes = { "retry" = 1 }

[[rule]]
name = "count-negative"
action = "count"
[rule.match]
attributes = { "delta" = -5 }

[[rule]]
name = "count-large"
action = "count"
[rule.match]
attributes = { "bytes" = 5000000000 }

[[rule]]
name = "count-event-and-int"
action = "count"
[rule.match]
event_name = "payment.failed"
attributes = { "http.status_code" = 503, "retry" = false }

[[rule]]
name = "count-by-status"
action = "count"
group_by = "attributes.http.status_code"

[[rule]]
name = "count-by-event"
action = "count"
group_by = "event_name"
max_groups = 2

[[rule]]
name = "count-by-severity"
action = "count"
group_by = "severity"

[[rule]]
name = "count-by-service"
action = "count"
group_by = "service"

[[rule]]
name = "count-retried-by-delta"
action = "count"
group_by = "attributes.delta"
[rule.match]
attributes = { "retry" = true }

[[rule]]
name = "count-by-retry"
action = "count"
group_by = "attributes.retry"

[[rule]]
name = "drop-payment-ok-first-try"
action = "drop"
[rule.match]
event_name = "payment.ok"
attributes = { "retry" = false }
"#;

/// Record `i` of the plan, and what it carries.
struct Planned {
    event: Option<&'static str>,
    status: i64,
    retry: bool,
    code_string: bool,
    delta: Option<i64>,
    bytes: Option<i64>,
}

fn planned(i: usize) -> Planned {
    Planned {
        event: match i % 5 {
            0 => Some("payment.failed"),
            1 => Some("payment.ok"),
            // A name that shares a prefix, and one as long as a rule's limit.
            2 if i.is_multiple_of(2) => Some("payment.failed.late"),
            _ => None,
        },
        status: if i.is_multiple_of(4) { 503 } else { 200 },
        retry: i.is_multiple_of(3),
        code_string: i.is_multiple_of(7),
        // Negative ints are 10-byte varints, large ones 5 bytes: records the walker takes
        // field by field.
        delta: i
            .is_multiple_of(11)
            .then_some(if i.is_multiple_of(22) { -5 } else { 5 }),
        bytes: i.is_multiple_of(13).then_some(5_000_000_000),
    }
}

fn record(i: usize) -> PlannedRecord {
    let p = planned(i);
    let mut attributes = vec![
        ("seq".to_string(), format!("s{i}")),
        ("http.status_code".to_string(), format!("int:{}", p.status)),
        ("retry".to_string(), format!("bool:{}", p.retry)),
    ];
    if p.code_string {
        attributes.push(("code".into(), "503".into()));
    }
    if let Some(d) = p.delta {
        attributes.push(("delta".into(), format!("int:{d}")));
    }
    if let Some(b) = p.bytes {
        attributes.push(("bytes".into(), format!("int:{b}")));
    }
    PlannedRecord {
        scope: "payments".into(),
        severity_number: 9,
        body: format!("payment attempt {i}"),
        attributes,
        event_name: p.event.map(str::to_string),
    }
}

/// What an SDK's run left: the requests that succeeded, and its records as it sent them.
struct Sent {
    requests: usize,
    records: Vec<ReceivedRecord>,
}

/// Sends the plan of `n` records through an agent with [`RULES`] with `send` (an SDK exporting
/// to the receiver), then checks every count, drop and group against the plan.
fn run_and_check(n: usize, send: impl FnOnce(&Receiver, &ExportPlan) -> Sent) {
    // Enough records for every value the checks expect (a retried record with delta 5 first
    // at record 33).
    assert!(n >= 100);
    let plan = ExportPlan {
        services: vec![("checkout".into(), (0..n).map(record).collect())],
        batch_size: 50,
        mode: ExportMode::Direct,
    };
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", RULES)]);
    let agent = start_agent(&dir, &[receiver.port()]);
    let sent = send(&receiver, &plan);
    receiver.wait_for(sent.requests, WAIT);
    let stats = stats_of(&agent);
    drop(agent);

    let count = |f: &dyn Fn(&Planned) -> bool| (0..n).filter(|&i| f(&planned(i))).count() as u64;
    let expect: BTreeMap<&str, u64> = [
        (
            "count-payment-failed",
            count(&|p| p.event == Some("payment.failed")),
        ),
        ("count-status-503", count(&|p| p.status == 503)),
        ("count-status-503-as-string", 0),
        ("count-code-503-string", count(&|p| p.code_string)),
        ("count-code-503-as-int", 0),
        ("count-retry", count(&|p| p.retry)),
        ("count-retry-as-int", 0),
        ("count-negative", count(&|p| p.delta == Some(-5))),
        ("count-large", count(&|p| p.bytes.is_some())),
        (
            "count-event-and-int",
            count(&|p| p.event == Some("payment.failed") && p.status == 503 && !p.retry),
        ),
        (
            "drop-payment-ok-first-try",
            count(&|p| p.event == Some("payment.ok") && !p.retry),
        ),
    ]
    .into();
    for (name, want) in &expect {
        let r = stats.rule(name).unwrap_or_else(|| panic!("no rule {name}"));
        assert_eq!(r.matched, *want, "{name}: matched");
    }
    let dropped = expect["drop-payment-ok-first-try"];
    assert!(dropped > 0 && expect["count-negative"] > 0 && expect["count-large"] > 0);
    assert_eq!(
        stats.rule("drop-payment-ok-first-try").unwrap().dropped,
        dropped
    );
    assert_eq!(stats.totals.records, n as u64);
    assert_no_passthrough(&stats);

    // Grouped counters: exact, capped at max_groups (first values first: one sender, one
    // connection), with __missing__ and __other__.
    let groups = |f: &dyn Fn(&Planned) -> String| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..n {
            *m.entry(f(&planned(i))).or_default() += 1;
        }
        m
    };
    let missing = || "__missing__".to_string();
    let want_groups: Vec<(&str, BTreeMap<String, u64>)> = vec![
        ("count-by-status", groups(&|p| p.status.to_string())),
        (
            "count-by-event",
            groups(&|p| match p.event {
                // The first two names seen (records 0 and 1) get groups; the third is other.
                Some(e @ ("payment.failed" | "payment.ok")) => e.to_string(),
                Some(_) => "__other__".into(),
                None => missing(),
            }),
        ),
        ("count-by-severity", groups(&|_| "INFO".into())),
        ("count-by-service", groups(&|_| "checkout".into())),
        (
            "count-retried-by-delta",
            (0..n)
                .map(planned)
                .filter(|p| p.retry)
                .fold(BTreeMap::new(), |mut m, p| {
                    *m.entry(p.delta.map_or_else(missing, |d| d.to_string()))
                        .or_default() += 1;
                    m
                }),
        ),
        ("count-by-retry", groups(&|p| p.retry.to_string())),
    ];
    for (name, want) in &want_groups {
        let r = stats.rule(name).unwrap_or_else(|| panic!("no rule {name}"));
        let got: BTreeMap<String, u64> = r
            .groups
            .clone()
            .unwrap_or_else(|| panic!("{name}: no groups in stats"))
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(&got, want, "{name}: groups");
        assert_eq!(
            got.values().sum::<u64>(),
            r.matched,
            "{name}: groups add up"
        );
    }
    assert_eq!(
        want_groups[1].1.len(),
        4,
        "event groups: two names, other, missing"
    );
    assert_eq!(want_groups[4].1.len(), 3, "delta groups: -5, 5, missing");

    // The same on the Prometheus endpoint, a series per group with a `group` label.
    let text = scrape_prometheus(&stats);
    for (name, want) in &want_groups {
        for (group, n) in want {
            let line = format!(
                "dt_rule_group_matched_total{{rule=\"{name}\",action=\"count\",hook=\"otlp\",active=\"true\",group=\"{group}\"}} {n}\n"
            );
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
    }

    // Exactly the other records arrive, each as it was sent.
    let got: Vec<String> = receiver
        .records()
        .iter()
        .map(|r| r.attribute("seq").unwrap_or("?").to_string())
        .collect();
    let want: Vec<String> = (0..n)
        .filter(|&i| {
            let p = planned(i);
            p.event != Some("payment.ok") || p.retry
        })
        .map(|i| format!("s{i}"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(sent.records.len(), n);
    let sent: BTreeMap<String, _> = sent
        .records
        .into_iter()
        .map(|r| (r.attribute("seq").unwrap().to_string(), r))
        .collect();
    for r in receiver.records() {
        assert_eq!(&sent[r.attribute("seq").unwrap()], &r);
    }
}

/// The Rust exporter (opentelemetry-otlp): `event_name` as field 12, ints and bools typed.
#[test]
fn event_name_and_typed_attributes_count_and_drop_exactly() {
    if !kernel_or_skip("event_name_and_typed_attributes_count_and_drop_exactly") {
        return;
    }
    run_and_check(600, |receiver, plan| {
        let report = export_with_real_exporter(receiver.port(), plan);
        report.assert_all_ok(plan.total());
        Sent {
            requests: report.batches_ok,
            records: report.sent_records(),
        }
    });
}

/// The same with the Python SDK (its `event_name` argument; Python ints and bools).
#[test]
fn python_sdk_event_name_and_typed_attributes_count_and_drop_exactly() {
    let name = "python_sdk_event_name_and_typed_attributes_count_and_drop_exactly";
    if !kernel_or_skip(name) || python_or_skip(name).is_none() {
        return;
    }
    run_and_check(300, |receiver, plan| {
        let report = export_with_python(&receiver.logs_url(), plan);
        report.assert_all_ok(plan.total());
        Sent {
            requests: report.batches_ok,
            records: report.sent_records(),
        }
    });
}

/// The same with the Node.js SDK: chunked requests, `eventName`, JavaScript numbers that are
/// integers (sent as `int_value`) and booleans.
#[test]
fn node_sdk_event_name_and_typed_attributes_count_and_drop_exactly() {
    let name = "node_sdk_event_name_and_typed_attributes_count_and_drop_exactly";
    if !kernel_or_skip(name) || node_or_skip(name).is_none() {
        return;
    }
    run_and_check(300, |receiver, plan| {
        let report = export_with_node(&receiver.logs_url(), plan);
        report.assert_all_ok(plan.total());
        Sent {
            requests: report.batches_ok,
            records: report.sent_records(),
        }
    });
}

/// The agent's Prometheus endpoint serving `stats`, scraped once.
fn scrape_prometheus(stats: &dt_agent::Stats) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let snapshot = stats.clone();
    let source: StatsSource = Arc::new(move || Ok(snapshot.clone()));
    let addr = rt.block_on(async {
        let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).expect("bind_metrics");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_prometheus(listener, source));
        addr
    });
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    text
}

/// `dt-agent stats` (the table) and `stats --json` of a running `dt-agent run` show a grouped
/// rule's groups.
#[test]
fn the_stats_verb_shows_groups_in_the_table_and_the_json() {
    if !kernel_or_skip("the_stats_verb_shows_groups_in_the_table_and_the_json") {
        return;
    }
    use dt_tests::agent_process::{AgentProcess, output_text};
    use dt_tests::otlp::{LogsRequestBuilder, Rec, encode};
    use dt_tests::{HttpRequestBuilder, RawClient, Split};

    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[(
        "50-test.toml",
        "[[rule]]\nname = \"by-kind\"\naction = \"count\"\ngroup_by = \"attributes.kind\"\n\
         max_groups = 2\n\n[[rule]]\nname = \"by-severity-never\"\naction = \"count\"\n\
         group_by = \"severity\"\n[rule.match]\nevent_name = \"never\"\n",
    )]);
    let mut agent = AgentProcess::new("groups-cli", dir.path(), &[rx.port()], false);
    agent.start();
    // Before any match, and for a rule that never matches: the key is there, every count 0.
    let unmatched = |names: &[&str]| {
        for r in agent.stats().rules {
            if names.contains(&r.name.as_str()) {
                assert!(
                    r.groups
                        .as_ref()
                        .is_some_and(|g| g.values().all(|&n| n == 0)),
                    "{r:?}"
                );
            }
        }
    };
    unmatched(&["by-kind", "by-severity-never"]);
    let mut b = LogsRequestBuilder::new().resource("svc").scope("ops");
    for (i, kind) in ["a", "b", "a", "c", "a"].iter().enumerate() {
        b = b.record(Rec::new(9, &format!("r{i}")).attr("kind", kind));
    }
    b = b.record(Rec::new(9, "no kind"));
    let req = HttpRequestBuilder::logs(encode(&b.build())).build();
    let mut c = RawClient::connect(rx.addr());
    assert_eq!(c.roundtrip(&req, &Split::Whole).status, 200);
    c.finish();
    rx.wait_for(1, WAIT);
    unmatched(&["by-severity-never"]);

    let json = agent.verb("stats", &["--json"]);
    assert!(json.status.success(), "{}", output_text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let rule = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "by-kind")
        .unwrap();
    assert_eq!(rule["matched"], 6);
    assert_eq!(
        rule["groups"],
        serde_json::json!({"a": 3, "b": 1, "__other__": 1, "__missing__": 1})
    );
    let table = agent.verb("stats", &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("by-kind"))
        .unwrap_or_else(|| panic!("{text}"));
    // The groups under their rule, largest first.
    let under: Vec<Vec<&str>> = lines[at + 1..at + 5]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        under,
        vec![
            vec!["a", "3"],
            vec!["__missing__", "1"],
            vec!["__other__", "1"],
            vec!["b", "1"]
        ],
        "{text}"
    );
}
