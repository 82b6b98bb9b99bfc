//! The official OpenTelemetry Node.js SDK exporter (@opentelemetry/exporter-logs-otlp-proto,
//! http/protobuf, no compression) through an agent, to the hyper receiver. It sends every export
//! as `Transfer-Encoding: chunked` (one chunk of the whole body, then `0\r\n\r\n`, keep-alive: see
//! `client_framing.rs`), which dt walks and edits like a Content-Length request (README,
//! "Chunked requests"): exact counters, exactly the kept records at the receiver, no request
//! passed through as `chunked`, every export answered with success. With `compression: 'gzip'`
//! (a gzipped body, still chunked) each export passes untouched, counted `compressed`.

use std::time::Duration;

use dt_tests::model::{Counts, Simulation, rules_toml, simulate};
use dt_tests::otlp::sent_records;
use dt_tests::{
    ExportMode, ExportPlan, NodeExportReport, Receiver, RuleSpec, TempRules, WAIT, assert_expected,
    assert_matched_dropped, assert_no_passthrough, assert_same_records, evaluate, export_with_node,
    export_with_node_simple, export_with_node_value, kernel_or_skip, node_or_skip, node_plan,
    start_agent, stats_of,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

fn node_kernel_or_skip(test: &str) -> bool {
    kernel_or_skip(test) && node_or_skip(test).is_some()
}

/// Before anything else: a chunked request dt did not walk shows here first.
fn assert_not_passed_as_chunked(name: &str, stats: &dt_agent::Stats) {
    let chunked = stats
        .totals
        .passthrough
        .get("chunked")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        chunked,
        0,
        "{name}: {chunked} of {} requests passed through untouched as chunked \
         (records {}, records_dropped {}, log_requests {})",
        stats.totals.requests,
        stats.totals.records,
        stats.totals.records_dropped,
        stats.totals.log_requests
    );
}

/// What arrived at the hyper receiver: decoded, all 200, still chunked (dt rewrites chunk sizes,
/// it does not reframe), nothing else arrived.
fn check_receiver(name: &str, receiver: &Receiver, requests: usize) {
    receiver.wait_for(requests, WAIT);
    receiver.assert_no_more(requests, Duration::from_millis(100));
    let failures = receiver.decode_failures();
    assert!(
        failures.is_empty(),
        "{name}: the receiver could not decode: {failures:?}"
    );
    for (i, r) in receiver.requests().iter().enumerate() {
        assert_eq!(r.status, 200, "{name}: request {i} status");
        assert!(r.logs.is_some(), "{name}: request {i} is not protobuf logs");
        assert!(
            r.chunked,
            "{name}: request {i} arrived without chunked framing"
        );
        assert_eq!(r.header("content-length"), None, "{name}: request {i}");
    }
}

/// No agent (no kernel needed): what the report says the exporter sent is exactly what the hyper
/// receiver decodes, in order, from chunked requests, one per export, on one keep-alive
/// connection per service. The kernel tests below rest on this.
#[test]
fn node_exporter_report_matches_the_receiver() {
    let test = "node_exporter_report_matches_the_receiver";
    if node_or_skip(test).is_none() {
        return;
    }
    let receiver = Receiver::start_v4();
    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 400);
    let report = export_with_node(&receiver.logs_url(), &plan);
    report.assert_all_ok(plan.total());
    assert_eq!(report.batches_ok, plan.direct_batches());
    check_receiver(test, &receiver, report.batches_ok);
    assert_eq!(
        receiver.connections(),
        2,
        "one keep-alive connection per service"
    );
    assert_same_records(test, &plan.records(), &report.sent_records());
    assert!(receiver.records() == report.sent_records(), "{test}: order");
    for (r, body) in receiver.requests().iter().zip(&report.bodies) {
        assert_eq!(
            &r.body, body,
            "{test}: body vs the exporter's serialized request"
        );
    }
    let requests = report.requests();
    assert_eq!(requests.len(), report.batches_ok);
    assert_eq!(report.versions["exporter-logs-otlp-proto"], "0.223.1");

    // The simple processor: one request per record, all on one connection.
    let receiver = Receiver::start_v4();
    let plan = ExportPlan::mixed(50, &["checkout"], 1);
    let report = export_with_node_simple(&receiver.logs_url(), &plan);
    report.assert_all_ok(50);
    assert_eq!(report.batches_ok, 50);
    check_receiver(test, &receiver, 50);
    assert_eq!(receiver.connections(), 1);
    assert!(receiver.records() == report.sent_records(), "{test}: order");
}

fn count_drop_rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-error-plus").severity(">=ERROR", 17..=24),
        RuleSpec::count("count-checkout").service("checkout"),
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz-route").attribute("http.route", "/healthz"),
        RuleSpec::count("count-payments-survivors").service("payments"),
    ]
}

/// The Node.js exporter sends `plan` through an agent with [`count_drop_rules`] to the hyper
/// receiver; everything is checked against the model.
fn run_count_drop(name: &str, plan: &ExportPlan, simple: bool) {
    let rules = count_drop_rules();
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);

    let report = if simple {
        export_with_node_simple(&receiver.logs_url(), plan)
    } else {
        export_with_node(&receiver.logs_url(), plan)
    };
    let requests = report.batches_ok;
    // Records a failed export carried are not in `sent`: read the counters first, so a failure
    // shows with what the kernel did.
    receiver.wait_for(report.http_requests.min(requests), WAIT);
    let stats = stats_of(&agent);
    drop(agent);
    assert_not_passed_as_chunked(name, &stats);
    report.assert_all_ok(plan.total());
    if plan.mode == ExportMode::Direct && !simple {
        assert_eq!(requests, plan.direct_batches(), "{name}: requests");
    }
    if simple {
        assert_eq!(requests, plan.total(), "{name}: one request per record");
    }

    assert_same_records(
        &format!("{name}: plan vs Node.js exporter"),
        &plan.records(),
        &report.sent_records(),
    );
    let expected = evaluate(&rules, &report.sent);
    assert!(expected.records_dropped > 0 && !expected.kept.is_empty());

    check_receiver(name, &receiver, requests);
    assert_same_records(
        &format!("{name}: hyper receiver"),
        &expected.kept,
        &receiver.records(),
    );

    assert_expected(&stats, &expected);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, requests as u64, "{name}: requests");
    assert_eq!(
        stats.totals.log_requests, requests as u64,
        "{name}: log_requests"
    );
    assert_eq!(
        stats.totals.bytes_out,
        receiver.total_bytes(),
        "{name}: bytes_out vs bytes the receiver read"
    );
    assert!(stats.totals.bytes_in > stats.totals.bytes_out);
    let removed = stats.totals.bytes_in - stats.totals.bytes_out;
    let dropped_bytes: u64 = expected.rules.iter().map(|r| r.dropped_bytes).sum();
    // Removed bytes are the dropped records, give or take length prefixes and chunk-size digits
    // (a few bytes per request).
    assert!(
        removed.abs_diff(dropped_bytes) <= 16 * requests as u64,
        "{name}: bytes_in - bytes_out = {removed}, dropped records = {dropped_bytes}"
    );
}

#[test]
fn node_exporter_sdk_pipeline_count_and_drop() {
    let test = "node_exporter_sdk_pipeline_count_and_drop";
    if !node_kernel_or_skip(test) {
        return;
    }
    // LoggerProvider + BatchLogRecordProcessor + OTLPLogExporter, one provider per service:
    // 10,000 records in chunked requests of up to 512 records.
    let plan = ExportPlan::mixed(10_000, &["checkout", "payments", "inventory"], 512)
        .with_mode(ExportMode::BatchProcessor);
    run_count_drop("node sdk pipeline -> hyper", &plan, false);
}

#[test]
fn node_exporter_direct_batches_count_and_drop() {
    let test = "node_exporter_direct_batches_count_and_drop";
    if !node_kernel_or_skip(test) {
        return;
    }
    // OTLPLogExporter.export() with batches of 250, awaited one after another: an exact number
    // of requests, all on one keep-alive connection per service.
    let plan = ExportPlan::mixed(10_000, &["checkout", "payments"], 250);
    run_count_drop("node direct -> hyper", &plan, false);
}

#[test]
fn node_exporter_simple_processor_count_and_drop() {
    let test = "node_exporter_simple_processor_count_and_drop";
    if !node_kernel_or_skip(test) {
        return;
    }
    // SimpleLogRecordProcessor: one small chunked request per record.
    let plan = ExportPlan::mixed(600, &["checkout", "payments"], 1);
    run_count_drop("node simple processor -> hyper", &plan, true);
}

// ---------------------------------------------------------------------------------------------
// sample and redact, with exact expectations: the exports are awaited one after another on one
// connection per service, so the kernel numbers a sample rule's matches in record order, and
// which records are kept is known exactly (match j of the rule, from 0, is kept when j is a
// multiple of keep_one_in; README, "Evaluation, per record"). The expectations are the model's
// `simulate`.

/// Direct mode (exports awaited in order) through an agent with `rules`; checks the records that
/// arrived, in order, and every counter exactly.
fn run_actions(name: &str, rules: &[RuleSpec], plan: &ExportPlan) -> NodeExportReport {
    assert_eq!(plan.mode, ExportMode::Direct);
    let dir = TempRules::with_files(&[("50-actions.toml", &rules_toml(rules))]);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);
    let report = export_with_node(&receiver.logs_url(), plan);
    receiver.wait_for(report.batches_ok, WAIT);
    let stats = stats_of(&agent);
    drop(agent);
    assert_not_passed_as_chunked(name, &stats);
    report.assert_all_ok(plan.total());
    let requests = report.batches_ok;
    assert_eq!(requests, plan.direct_batches(), "{name}: requests");
    assert_same_records(
        &format!("{name}: plan vs Node.js exporter"),
        &plan.records(),
        &report.sent_records(),
    );
    check_receiver(name, &receiver, requests);

    let Simulation {
        counts,
        records_dropped,
        kept: arrived,
        ..
    } = simulate(rules, &report.sent);
    assert!(records_dropped > 0 && !arrived.is_empty());
    let got = receiver.records();
    assert_same_records(&format!("{name}: hyper receiver"), &arrived, &got);
    assert!(
        got == arrived,
        "{name}: the records arrived in another order than sent"
    );
    let mut problems = Vec::new();
    for (rule, want) in rules.iter().zip(&counts) {
        let n = &rule.name;
        let Some(r) = stats.rule(n) else {
            problems.push(format!("rule {n} not listed"));
            continue;
        };
        if r.action != rule.action.as_str() || !r.active {
            problems.push(format!(
                "rule {n}: action {:?} active {}",
                r.action, r.active
            ));
        }
        let have = Counts {
            matched: r.matched,
            kept: r.kept,
            dropped: r.dropped,
            dropped_bytes: r.dropped_bytes,
            redacted: r.redacted,
        };
        if &have != want {
            problems.push(format!("rule {n}: {have:?} want {want:?}"));
        }
    }
    if stats.totals.records != report.sent.len() as u64 {
        problems.push(format!(
            "totals.records {} want {}",
            stats.totals.records,
            report.sent.len()
        ));
    }
    if stats.totals.records_dropped != records_dropped {
        problems.push(format!(
            "totals.records_dropped {} want {records_dropped}",
            stats.totals.records_dropped
        ));
    }
    assert!(
        problems.is_empty(),
        "{name}: differs from the model:\n  {}\ntotals: {:?}",
        problems.join("\n  "),
        stats.totals
    );
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, requests as u64, "{name}: requests");
    assert_eq!(
        stats.totals.bytes_out,
        receiver.total_bytes(),
        "{name}: bytes_out vs bytes the receiver read"
    );
    report
}

#[test]
fn node_exporter_sample() {
    let test = "node_exporter_sample";
    if !node_kernel_or_skip(test) {
        return;
    }
    let rules = vec![
        RuleSpec::count("count-all"),
        RuleSpec::sample("sample-info", 10).severity("INFO", 9..=12),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::sample("sample-healthz", 3).attribute("http.route", "/healthz"),
        RuleSpec::count("count-survivors"),
    ];
    let plan = ExportPlan::mixed(10_000, &["checkout", "payments"], 400);
    run_actions(test, &rules, &plan);
}

/// `ExportPlan::mixed` with secrets on some records: `user.email` on every 4th, `auth.token` on
/// every 6th, and bodies with an address on every 5th.
fn redact_plan(total: usize, batch_size: usize) -> ExportPlan {
    let mut plan = ExportPlan::mixed(total, &["checkout", "accounts", "payments"], batch_size);
    let mut i = 0usize;
    for (_, recs) in &mut plan.services {
        for r in recs {
            if i % 4 == 1 {
                r.attributes
                    .push(("user.email".into(), format!("user{i}@example.com")));
            }
            if i % 6 == 2 {
                r.attributes
                    .insert(0, ("auth.token".into(), format!("tok-{i:08x}")));
            }
            if i.is_multiple_of(5) {
                r.body = format!("login failed for user{i}@example.com");
            }
            i += 1;
        }
    }
    plan
}

#[test]
fn node_exporter_redact() {
    let test = "node_exporter_redact";
    if !node_kernel_or_skip(test) {
        return;
    }
    let rules = vec![
        RuleSpec::redact("scrub-accounts", &["user.email", "auth.token"], true).service("accounts"),
        RuleSpec::redact("strip-emails", &["user.email"], false).severity(">=WARN", 13..=24),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::count("count-survivors"),
    ];
    let plan = redact_plan(6_000, 300);
    run_actions(test, &rules, &plan);
}

// ---------------------------------------------------------------------------------------------
// The rip cord and rule changes on a live Node.js connection.

/// One Node.js exporter, one keep-alive connection, five chunked exports, and between them the
/// agent changes: an empty rule set, then a first push, the rip cord pulled, then put back.
/// Exports dt does not walk pass byte for byte, counted under their reason; every one after
/// them on the same connection is walked again (dt follows the framing of the requests it
/// passes), so nothing on the connection goes unfollowed.
#[test]
fn node_exporter_connection_is_filtered_again_after_enable_and_a_first_push() {
    let test = "node_exporter_connection_is_filtered_again_after_enable_and_a_first_push";
    if !node_kernel_or_skip(test) {
        return;
    }
    let rules = count_drop_rules();
    let empty = TempRules::from_rules(&[]);
    let full = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let mut agent = start_agent(&empty, &[receiver.port()]);
    let pauses = tempfile::tempdir().expect("tempdir");
    let plan = ExportPlan::mixed(1_000, &["checkout"], 200);
    let mut v = node_plan(&receiver.logs_url(), &plan);
    v["mode"] = serde_json::json!("direct");
    v["pause_dir"] = serde_json::json!(pauses.path());
    v["pause_before"] = serde_json::json!([1, 2, 3]);
    let node = std::thread::spawn(move || export_with_node_value(&v));

    // Before export k, the agent changes; export k then goes out on the same connection.
    let wait_paused = |k: usize| {
        let p = pauses.path().join(format!("paused-{k}"));
        let deadline = std::time::Instant::now() + WAIT;
        while !p.exists() {
            assert!(std::time::Instant::now() < deadline, "{test}: no pause {k}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let resume = |k: usize| {
        std::fs::write(pauses.path().join(format!("resume-{k}")), "").expect("resume");
    };
    wait_paused(1);
    agent.reload(full.path()).expect("the first push");
    resume(1);
    wait_paused(2);
    agent.set_enabled(false).expect("disable");
    resume(2);
    wait_paused(3);
    agent.set_enabled(true).expect("enable");
    resume(3);
    let report = node.join().expect("the Node.js exporter's thread");
    report.assert_all_ok(plan.total());
    assert_eq!(report.batches_ok, 5);
    receiver.wait_for(5, WAIT);
    let stats = stats_of(&agent);
    drop(agent);

    assert_eq!(
        receiver.connections(),
        1,
        "{test}: one keep-alive connection"
    );
    let got = receiver.requests();
    let walked = [false, true, false, true, true];
    let mut walked_records = Vec::new();
    for (i, (r, body)) in got.iter().zip(&report.bodies).enumerate() {
        assert!(r.chunked, "{test}: export {i} arrived chunked");
        let req = ExportLogsServiceRequest::decode(body.as_slice()).expect("a sent body");
        let recs = sent_records(&req);
        if walked[i] {
            assert_eq!(
                r.records(),
                evaluate(&rules, &recs).kept,
                "{test}: export {i} is filtered"
            );
            walked_records.extend(recs);
        } else {
            assert_eq!(&r.body, body, "{test}: export {i} passes byte for byte");
        }
    }
    let pt = &stats.totals.passthrough;
    assert_eq!(pt.get("no_rules"), Some(&1), "{test}: {pt:?}");
    assert_eq!(pt.get("disabled"), Some(&1), "{test}: {pt:?}");
    assert_not_passed_as_chunked(test, &stats);
    assert_eq!(stats.totals.untracked_bytes, 0, "{test}: never unfollowed");
    assert_eq!(stats.totals.requests, 5);
    assert_eq!(stats.totals.bytes_out, receiver.total_bytes());
    let want = evaluate(&rules, &walked_records);
    assert!(want.records_dropped > 0);
    assert_eq!(stats.totals.records_dropped, want.records_dropped);
    assert_matched_dropped(test, &stats, &want);
}

/// Exports 600 records in 3 direct batches with the Node exporter, its plan's `key` set to
/// `value`, through an agent with [`count_drop_rules`] that must not walk them: each export
/// passes untouched, counted under `reason`, on one followed keep-alive connection, and no rule
/// evaluates a record. `check` looks at each request as it arrived; returns the report and the
/// receiver.
fn passes_untouched(
    test: &str,
    key: &str,
    value: &str,
    reason: &str,
    check: impl Fn(usize, &dt_tests::Received),
) -> (NodeExportReport, Receiver) {
    let dir = TempRules::from_rules(&count_drop_rules());
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);
    let plan = ExportPlan::mixed(600, &["checkout"], 200);
    let mut v = node_plan(&receiver.logs_url(), &plan);
    v["mode"] = serde_json::json!("direct");
    v[key] = serde_json::json!(value);
    let report = export_with_node_value(&v);
    report.assert_all_ok(plan.total());
    assert_eq!(report.batches_ok, 3);
    receiver.wait_for(3, WAIT);
    let stats = stats_of(&agent);
    drop(agent);

    assert_eq!(
        receiver.connections(),
        1,
        "{test}: one keep-alive connection"
    );
    for (i, r) in receiver.requests().iter().enumerate() {
        assert!(r.chunked, "{test}: export {i} arrived chunked");
        check(i, r);
    }
    let pt = &stats.totals.passthrough;
    assert_eq!(pt.get(reason), Some(&3), "{test}: {pt:?}");
    assert_not_passed_as_chunked(test, &stats);
    assert_eq!(stats.totals.untracked_bytes, 0, "{test}: never unfollowed");
    assert_eq!(stats.totals.requests, 3);
    assert_eq!(stats.totals.log_requests, 0);
    assert_eq!(
        stats.totals.bytes_in, stats.totals.bytes_out,
        "{test}: untouched"
    );
    assert_eq!(stats.totals.bytes_out, receiver.total_bytes());
    assert!(
        stats.rules.iter().all(|r| r.matched == 0),
        "{test}: nothing evaluated"
    );
    (report, receiver)
}

/// The Node.js SDK's http/json exporter (@opentelemetry/exporter-logs-otlp-http): the same
/// chunked transport with a JSON body. dt does not walk JSON: each export passes byte for byte,
/// counted `json`, and the keep-alive connection stays followed from one export to the next
/// (none of its bytes go untracked).
#[test]
fn node_json_exporter_passes_counted_and_followed() {
    let test = "node_json_exporter_passes_counted_and_followed";
    if !node_kernel_or_skip(test) {
        return;
    }
    passes_untouched(test, "protocol", "json", "json", |i, r| {
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{test}: export {i}"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON body");
        assert!(body["resourceLogs"].is_array(), "{test}: export {i}");
    });
}

/// `compression: 'gzip'`: the Node exporter pipes each body through zlib into a chunked request
/// with `Content-Encoding: gzip`. dt does not walk compressed bodies: each passes untouched,
/// counted `compressed`, its connection followed (the next request is looked at again), and every
/// record arrives as the exporter encoded it.
#[test]
fn node_gzip_exporter_passes_counted_compressed_and_followed() {
    let test = "node_gzip_exporter_passes_counted_compressed_and_followed";
    if !node_kernel_or_skip(test) {
        return;
    }
    let (report, receiver) = passes_untouched(test, "compression", "gzip", "compressed", |i, r| {
        assert_eq!(
            r.header("content-encoding"),
            Some("gzip"),
            "{test}: export {i}"
        );
        assert!(
            r.logs.is_some(),
            "{test}: export {i} does not gunzip to logs"
        );
    });
    // Every record, as the exporter encoded it (the receiver gunzips).
    assert_same_records(
        test,
        &ExportPlan::mixed(600, &["checkout"], 200).records(),
        &report.sent_records(),
    );
    assert!(
        receiver.records() == report.sent_records(),
        "{test}: records"
    );
}

/// `mask_body` on the bodies the Node.js SDK sends for structured logs (an object is a
/// kvlist_value, an array an array_value, a number a double or int): each arrives as a string of
/// `*` filling the value's bytes, nothing of it readable, in its chunked request; a string body
/// is masked in place.
#[test]
fn node_exporter_structured_bodies_are_masked_whole() {
    let test = "node_exporter_structured_bodies_are_masked_whole";
    if !node_kernel_or_skip(test) {
        return;
    }
    let receiver = Receiver::start_v4();
    let rules = vec![RuleSpec::redact("mask-accounts", &[], true).service("accounts")];
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[receiver.port()]);
    let record = |_| dt_tests::PlannedRecord {
        scope: "auth".into(),
        severity_number: 9,
        body: String::new(),
        attributes: vec![],
        event_name: None,
    };
    let plan = ExportPlan {
        services: vec![("accounts".into(), (0..4).map(record).collect())],
        batch_size: 10,
        mode: ExportMode::Direct,
    };
    let mut v = node_plan(&receiver.logs_url(), &plan);
    let bodies = [
        serde_json::json!("login failed for bob@example.com"),
        serde_json::json!({"msg": "login", "email": "bob@example.com", "attempt": 3}),
        serde_json::json!(["bob@example.com", true]),
        serde_json::json!(12.5),
    ];
    dt_tests::set_bodies(&mut v, &bodies);
    let report = export_with_node_value(&v);
    report.assert_all_ok(4);
    receiver.wait_for(1, WAIT);
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    assert!(got[0].chunked, "the Node.js SDK sends chunked");
    let needle = b"bob@example.com";
    assert!(
        !got[0].body.windows(needle.len()).any(|w| w == needle),
        "{test}: a body left readable"
    );
    let masked: Vec<String> = got[0]
        .records()
        .iter()
        .map(|r| r.body.clone().unwrap_or_default())
        .collect();
    assert!(
        masked
            .iter()
            .all(|b| !b.is_empty() && b.bytes().all(|c| c == b'*')),
        "{test}: {masked:?}"
    );
    assert_eq!(masked[0].len(), "login failed for bob@example.com".len());
    // A double is a fixed64 after its tag: 9 bytes, a string of 7 '*'.
    assert_eq!(masked[3].len(), 7, "{masked:?}");
    let s = stats_of(&agent);
    assert_eq!(s.rule("mask-accounts").unwrap().redacted, 4);
    assert_no_passthrough(&s);
}
