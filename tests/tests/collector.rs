//! A real OpenTelemetry collector on either side of dt (Rotel, `rotel-agent`, installed by
//! setup; see `dt_tests::collector`):
//!
//! - as the receiver: the Python SDK exports to the collector's hooked OTLP/HTTP port, dt drops
//!   and redacts in the kernel, and the collector, a real OTLP decoder (Rust, hyper, prost),
//!   accepts every edited request and forwards exactly the records the rules kept, as edited;
//! - as the client: a collector forwarding to a hooked port (a node's collector to its gateway).
//!   Its OTLP/HTTP exporter gzips every request (in this version whatever its compression flags
//!   say, as the OpenTelemetry Collector's `otlphttp` exporter does by default), so every
//!   request passes byte for byte, counted `compressed`, the connection followed, every record
//!   delivered.

use dt_tests::collector::{Rotel, collector_or_skip, wait_records};
use dt_tests::model::simulate;
use dt_tests::{
    CaptureListener, Collector as _, ExportPlan, PyReceiver, RuleSpec, TempRules, WAIT,
    assert_no_passthrough, assert_passthrough_only, assert_same_records, export_with_python,
    kernel_or_skip, python_or_skip, start_agent, stats_of,
};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::redact("strip-request-id", &["request.id"], false),
        RuleSpec::redact("mask-payments-bodies", &[], true).service("payments"),
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::count("count-checkout").service("checkout"),
    ]
}

#[test]
fn collector_receives_what_dt_kept() {
    let test = "collector_receives_what_dt_kept";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let Some(bin) = collector_or_skip(test) else {
        return;
    };
    let rules = rules();
    let cap = CaptureListener::start();
    let mut collector = Rotel::start(&bin, &format!("http://127.0.0.1:{}", cap.port()), &[]);
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[collector.port()]);

    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 200);
    let report = export_with_python(&collector.logs_url(), &plan);
    // The collector decoded every edited request and answered each 200.
    report.assert_all_ok(3_000);
    let stats = stats_of(&agent);
    drop(agent);

    let expected = simulate(&rules, &report.sent);
    assert!(expected.records_dropped > 0 && !expected.kept.is_empty());
    let (got, forwarded) = wait_records(&cap, expected.kept.len(), WAIT);
    collector.stop();
    assert_same_records(
        &format!("{test}: what the collector forwarded"),
        &expected.kept,
        &forwarded,
    );
    assert_eq!(
        cap.requests().iter().map(|r| r.body.len()).sum::<usize>(),
        got.iter().map(|r| r.body.len()).sum::<usize>(),
        "{test}: nothing forwarded after the kept records"
    );
    assert!(
        forwarded
            .iter()
            .all(|r| r.attribute("request.id").is_none()),
        "{test}: an unredacted request.id"
    );
    assert!(forwarded.iter().any(|r| r.service == "payments"));
    assert!(
        forwarded
            .iter()
            .filter(|r| r.service == "payments")
            .all(|r| r
                .body
                .as_deref()
                .is_some_and(|b| b.bytes().all(|c| c == b'*'))),
        "{test}: a payments body not masked"
    );

    assert_no_passthrough(&stats);
    let t = &stats.totals;
    assert_eq!(
        (t.log_requests, t.records, t.records_dropped),
        (report.batches_ok as u64, 3_000, expected.records_dropped),
        "{test}: {t:?}"
    );
    for (rule, counts) in rules.iter().zip(&expected.counts) {
        let got = stats
            .rules
            .iter()
            .find(|r| r.name == rule.name)
            .unwrap_or_else(|| panic!("{test}: no rule {} in stats", rule.name));
        assert_eq!(
            (got.matched, got.dropped),
            (counts.matched, counts.dropped),
            "{test}: rule {}",
            rule.name
        );
    }
    println!(
        "{test}: {} requests from the SDK, {} records kept of 3000, {} forwarded requests",
        report.batches_ok,
        forwarded.len(),
        got.len()
    );
}

#[test]
fn collector_exporter_passes_untouched_counted_compressed() {
    let test = "collector_exporter_passes_untouched_counted_compressed";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let Some(bin) = collector_or_skip(test) else {
        return;
    };
    let receiver = PyReceiver::start_v4();
    let dir = TempRules::from_rules(&rules());
    let agent = start_agent(&dir, &[receiver.port()]);
    let mut collector = Rotel::start(
        &bin,
        &format!("http://127.0.0.1:{}", receiver.port()),
        &["--otlp-exporter-logs-compression", "none"],
    );

    // Exports in several rounds, so the collector forwards several requests on its connection.
    let mut sent = Vec::new();
    for round in 0..3 {
        let plan = ExportPlan::mixed(1_000, &["checkout", "payments"], 250);
        let report = export_with_python(&collector.logs_url(), &plan);
        report.assert_all_ok(1_000);
        sent.extend(report.sent_records());
        let deadline = std::time::Instant::now() + WAIT;
        while receiver.records().len() < sent.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "{test}: round {round}: {} of {} records arrived; collector log:\n{}",
                receiver.records().len(),
                sent.len(),
                collector.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    collector.stop();
    let stats = stats_of(&agent);
    drop(agent);

    let failures = receiver.decode_failures();
    assert!(failures.is_empty(), "{test}: receiver: {failures:?}");
    assert!(receiver.all_ok(), "{test}: an export was not answered OK");
    assert_same_records(test, &sent, &receiver.records());
    let results = receiver.results();
    for r in &results {
        assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{test}");
    }
    let conns: std::collections::BTreeSet<u64> = results.iter().map(|r| r.conn).collect();
    println!(
        "{test}: {} requests forwarded on {} connections",
        results.len(),
        conns.len()
    );
    assert!(results.len() >= 3, "{test}: a request a round at least");
    // Every request was seen, counted `compressed`, and passed untouched; none was walked.
    assert_passthrough_only(&stats, "compressed", results.len() as u64);
    let t = &stats.totals;
    assert_eq!(t.requests, results.len() as u64, "{test}: {t:?}");
    assert_eq!((t.log_requests, t.records), (0, 0), "{test}: {t:?}");
    assert_eq!(t.bytes_in, t.bytes_out, "{test}: {t:?}");
    assert_eq!(
        t.untracked_bytes, 0,
        "{test}: the connection followed: {t:?}"
    );
    for r in &stats.rules {
        assert_eq!(r.matched, 0, "{test}: rule {}", r.name);
    }
}
