//! The drop path over IPv6 loopback (`localhost` resolves to ::1 for many exporters).

use dt_tests::{
    Conn, ExportPlan, LogsRequestBuilder, Rec, Receiver, RuleSpec, Scenario, Split, TempRules,
    WAIT, assert_expected, assert_no_passthrough, assert_same_records, evaluate,
    export_with_real_exporter_to, kernel_or_skip, start_agent, stats_of,
};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz").attribute("http.route", "/healthz"),
    ]
}

#[test]
fn ipv6_raw_client_drops() {
    if !kernel_or_skip("ipv6_raw_client_drops") {
        return;
    }
    let mut b = LogsRequestBuilder::new().resource("v6").scope("app");
    for i in 0..30 {
        let sev = [5, 9, 13, 17][i % 4];
        let body = if i % 7 == 0 {
            format!("healthcheck {i}")
        } else {
            format!("v6 record {i}")
        };
        let mut r = Rec::new(sev, &body);
        if i % 5 == 0 {
            r = r.attr("http.route", "/healthz");
        }
        b = b.record(r);
    }
    let logs = b.build();
    Scenario::new("ipv6", rules())
        .ipv6()
        .conn(
            Conn::new()
                .send(logs.clone(), Split::Whole)
                .send(logs, Split::head_then_body(3)),
        )
        .run();
}

#[test]
fn ipv6_real_exporter() {
    if !kernel_or_skip("ipv6_real_exporter") {
        return;
    }
    let receiver = Receiver::start_v6();
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[receiver.port()]);
    let plan = ExportPlan::mixed(2_000, &["checkout", "payments"], 250);
    let report = export_with_real_exporter_to(&receiver.logs_url(), &plan);
    report.assert_all_ok(plan.total());
    receiver.wait_for(plan.direct_batches(), WAIT);
    let stats = stats_of(&agent);
    drop(agent);
    let expected = evaluate(&rules, &report.sent);
    assert!(receiver.decode_failures().is_empty());
    assert_same_records("ipv6 exporter", &expected.kept, &receiver.records());
    assert_expected(&stats, &expected);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, plan.direct_batches() as u64);
    assert_eq!(stats.totals.bytes_out, receiver.total_bytes());
}
