//! Traffic to a port the agent was not told about is neither touched nor counted.

use std::time::Duration;

use dt_tests::otlp::encode;
use dt_tests::{
    ExportPlan, HttpRequestBuilder, LogsRequestBuilder, RawClient, Rec, Receiver, RuleSpec, Split,
    TempRules, WAIT, assert_same_records, export_with_real_exporter, kernel_or_skip, reserve_port,
    start_agent, stats_of,
};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
    ]
}

#[test]
fn unconfigured_port_is_untouched() {
    if !kernel_or_skip("unconfigured_port_is_untouched") {
        return;
    }
    // The agent hooks a port of its own (kept reserved); the receiver listens elsewhere.
    let (_reserved, hooked_port) = reserve_port();
    let receiver = Receiver::start_v4();
    assert_ne!(receiver.port(), hooked_port);
    let dir = TempRules::from_rules(&rules());
    let agent = start_agent(&dir, &[hooked_port]);

    let mut b = LogsRequestBuilder::new().resource("svc").scope("app");
    for i in 0..20 {
        b = b.record(Rec::new(5, &format!("healthcheck {i}")));
    }
    let logs = b.build();
    let req = HttpRequestBuilder::logs(encode(&logs)).build();
    let mut client = RawClient::connect(receiver.addr());
    for split in [Split::Whole, Split::head_then_body(3)] {
        assert_eq!(client.roundtrip(&req, &split).status, 200);
    }
    let sent = client.sent.clone();
    client.finish();

    let plan = ExportPlan::mixed(500, &["checkout"], 100);
    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(plan.total());
    let n = 2 + plan.direct_batches();
    receiver.wait_for(n, WAIT);
    receiver.assert_no_more(n, Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    assert_eq!(
        receiver.connection_bytes()[0],
        sent,
        "raw connection changed"
    );
    let mut all = dt_tests::record::flatten(&logs);
    all.extend(dt_tests::record::flatten(&logs));
    all.extend(plan.records());
    assert_same_records("unconfigured", &all, &receiver.records());
    let t = &stats.totals;
    assert_eq!(
        (
            t.requests,
            t.log_requests,
            t.records,
            t.records_dropped,
            t.bytes_in,
            t.bytes_out
        ),
        (0, 0, 0, 0, 0, 0),
        "nothing may be counted: {t:?}"
    );
    assert_eq!(stats.passthrough_total(), 0);
    for r in &stats.rules {
        assert_eq!((r.matched, r.dropped), (0, 0), "rule {}", r.name);
    }
}
