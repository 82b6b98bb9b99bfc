//! The real OpenTelemetry Rust exporter (opentelemetry-otlp, HTTP/protobuf) through an agent.

use dt_tests::{
    ExportMode, ExportPlan, Receiver, RuleSpec, TempRules, WAIT, assert_expected,
    assert_no_passthrough, assert_same_records, evaluate, export_with_real_exporter,
    kernel_or_skip, start_agent, stats_of,
};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-error-plus").severity(">=ERROR", 17..=24),
        RuleSpec::count("count-checkout").service("checkout"),
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz-route").attribute("http.route", "/healthz"),
        RuleSpec::count("count-payments-survivors").service("payments"),
    ]
}

fn run(name: &str, plan: ExportPlan) {
    let receiver = Receiver::start_v4();
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[receiver.port()]);

    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(plan.total());
    let requests = report.batches_ok;
    if plan.mode == ExportMode::Direct {
        assert_eq!(requests, plan.direct_batches());
    }
    let got = receiver.wait_for(requests, WAIT);
    receiver.assert_no_more(requests, std::time::Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    // Expected values from the plan as the exporter encoded it, through the test's own model.
    assert_same_records(
        &format!("{name}: plan vs exporter"),
        &plan.records(),
        &report.sent_records(),
    );
    let expected = evaluate(&rules, &report.sent);
    assert!(expected.records_dropped > 0 && !expected.kept.is_empty());

    assert!(
        receiver.decode_failures().is_empty(),
        "{name}: receiver could not decode: {:?}",
        receiver.decode_failures()
    );
    assert!(got.iter().all(|r| r.logs.is_some() && r.status == 200));
    assert_same_records(
        &format!("{name}: receiver"),
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
        "{name}: bytes_out"
    );
    assert!(stats.totals.bytes_in > stats.totals.bytes_out);
    let removed = stats.totals.bytes_in - stats.totals.bytes_out;
    let dropped_bytes: u64 = expected.rules.iter().map(|r| r.dropped_bytes).sum();
    // Removed bytes are the dropped records, give or take length prefixes and Content-Length
    // digits (a few bytes per request).
    assert!(
        removed.abs_diff(dropped_bytes) <= 16 * requests as u64,
        "{name}: bytes_in - bytes_out = {removed}, dropped records = {dropped_bytes}"
    );
}

#[test]
fn otel_exporter_10k_records_count_and_drop() {
    if !kernel_or_skip("otel_exporter_10k_records_count_and_drop") {
        return;
    }
    let plan = ExportPlan::mixed(10_000, &["checkout", "payments", "inventory"], 200);
    assert_eq!(plan.total(), 10_000);
    run("10k direct", plan);
}

#[test]
fn otel_exporter_batch_processor() {
    if !kernel_or_skip("otel_exporter_batch_processor") {
        return;
    }
    let plan = ExportPlan::mixed(4_000, &["checkout", "payments"], 512)
        .with_mode(ExportMode::BatchProcessor);
    run("batch processor", plan);
}

/// 100,000 records from the real exporter through a rule that drops 90% of them: the receiver
/// gets exactly the other 10%, its bytes are the kept records' encodings plus framing, and the
/// exporter sees no failure.
#[test]
fn otel_exporter_100k_records_drop_90_percent() {
    if !kernel_or_skip("otel_exporter_100k_records_drop_90_percent") {
        return;
    }
    use dt_tests::PlannedRecord;
    use prost::Message;

    let records: Vec<PlannedRecord> = (0..100_000)
        .map(|i| PlannedRecord {
            scope: "app".into(),
            severity_number: 9,
            body: if i % 10 == 0 {
                format!("kept record {i}: the tenth that matters")
            } else {
                format!("noise record {i}: nobody reads this")
            },
            attributes: vec![("request.id".into(), format!("req-{i}"))],
            event_name: None,
        })
        .collect();
    let plan = ExportPlan {
        services: vec![("checkout".into(), records)],
        batch_size: 1000,
        mode: ExportMode::Direct,
    };
    let rules = vec![RuleSpec::drop("drop-noise").body_contains("noise")];
    let receiver = Receiver::start_v4();
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[receiver.port()]);

    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(100_000);
    let requests = report.batches_ok;
    let got = receiver.wait_for(requests, WAIT);
    let stats = stats_of(&agent);
    drop(agent);

    let expected = evaluate(&rules, &report.sent);
    assert_eq!(expected.kept.len(), 10_000);
    assert_same_records("100k: receiver", &expected.kept, &receiver.records());
    assert_expected(&stats, &expected);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.records, 100_000);
    assert_eq!(stats.totals.records_dropped, 90_000);

    // Every request body is the canonical encoding of what it holds, give or take the padding
    // of the two length prefixes dt rewrote in place (a few bytes each).
    for r in &got {
        let logs = r.logs.as_ref().expect("decoded");
        let canonical = logs.encode_to_vec().len();
        let padding = r.body.len() - canonical;
        assert!(
            padding <= 8,
            "request {}: {padding} bytes of padding",
            r.seq_on_conn
        );
    }
    // What left the host is what came in less exactly the dropped records' encodings and the
    // Content-Length digits that shrank.
    let removed = stats.totals.bytes_in - stats.totals.bytes_out;
    let dropped_bytes = stats.rule("drop-noise").unwrap().dropped_bytes;
    assert!(
        removed >= dropped_bytes && removed - dropped_bytes <= 2 * requests as u64,
        "removed {removed}, dropped records {dropped_bytes}"
    );
    assert_eq!(stats.totals.bytes_out, receiver.total_bytes());
}
