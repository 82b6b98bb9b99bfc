//! Senders in another network namespace, across a veth pair, as an app in a container or pod
//! reaches a collector on its node: a real link (MTU 1500, so a request of tens of KiB leaves in
//! dozens of segments) instead of loopback. The Python exporter (`Content-Length`, head and body
//! in separate writes) and the Node exporter (chunked) each send through an agent with drop and
//! count rules to the hyper receiver listening on the host's end; everything is checked against
//! the model, record for record and counter for counter.

use std::net::SocketAddr;

use dt_tests::netns::Netns;
use dt_tests::{
    ExportPlan, Receiver, RuleSpec, SentRecord, TempRules, WAIT, assert_expected,
    assert_no_passthrough, assert_same_records, evaluate, export_with_node_in_netns,
    export_with_python_in_netns, kernel_or_skip, node_or_skip, python_or_skip, start_agent,
    stats_of,
};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-error-plus").severity(">=ERROR", 17..=24),
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz-route").attribute("http.route", "/healthz"),
        RuleSpec::count("count-payments-survivors").service("payments"),
    ]
}

/// A namespace, or `None` after printing why there is none (a panic when kernel tests are
/// required: this machine kind has `ip` and root).
fn netns_or_skip(test: &str) -> Option<Netns> {
    match Netns::new() {
        Ok(ns) => Some(ns),
        Err(e) => {
            if std::env::var(dt_tests::kernel::REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{test}: no network namespace: {e}");
            }
            eprintln!("SKIPPED {test}: no network namespace: {e}");
            None
        }
    }
}

/// The requests came over the veth pair, not some other way: the host's end received at least
/// the bytes the receiver read.
fn assert_crossed(ns: &Netns, rx_before: u64, receiver: &Receiver) {
    let crossed = ns.host_rx_bytes() - rx_before;
    assert!(
        crossed >= receiver.total_bytes(),
        "{crossed} bytes crossed the veth pair, the receiver read {}",
        receiver.total_bytes()
    );
}

/// Checks what `receiver` got, and the agent's counters, against the model for `sent`.
fn check(name: &str, receiver: &Receiver, stats: &dt_agent::Stats, sent: &[SentRecord]) {
    let rules = rules();
    let expected = evaluate(&rules, sent);
    assert!(expected.records_dropped > 0 && !expected.kept.is_empty());
    for (i, r) in receiver.requests().iter().enumerate() {
        assert_eq!(r.status, 200, "{name}: request {i} answered {}", r.status);
        assert!(
            r.decode_error.is_none(),
            "{name}: request {i}: {:?}",
            r.decode_error
        );
    }
    assert_same_records(name, &expected.kept, &receiver.records());
    assert_expected(stats, &expected);
    assert_no_passthrough(stats);
    assert_eq!(stats.totals.records, sent.len() as u64, "{name}: records");
    assert_eq!(
        stats.totals.records_dropped, expected.records_dropped,
        "{name}: records_dropped"
    );
}

/// What one exporter run did: its records as sent, and its successful exports.
struct Sent {
    records: Vec<SentRecord>,
    exports: usize,
}

/// `export` (an exporter run from inside a namespace, to a URL) sends the plan across a veth
/// pair through an agent with [`rules`]; returns the receiver and the agent's stats, the bytes
/// checked to have crossed the pair.
fn across(
    export: impl FnOnce(&str, &ExportPlan, &Netns) -> Sent,
    ns: &Netns,
) -> (Receiver, dt_agent::Stats, Sent) {
    let receiver = Receiver::start(
        std::net::TcpListener::bind(SocketAddr::new(ns.host, 0)).expect("bind on the veth"),
    );
    let dir = TempRules::from_rules(&rules());
    let agent = start_agent(&dir, &[receiver.port()]);
    // Batches of 400 records: requests of about 60 KiB, some 40 segments each on the link.
    let plan = ExportPlan::mixed(4_000, &["checkout", "payments", "inventory"], 400);
    let rx0 = ns.host_rx_bytes();
    let sent = export(&receiver.logs_url(), &plan, ns);
    assert_eq!(sent.records.len(), plan.total());
    receiver.wait_for(sent.exports, WAIT);
    assert_crossed(ns, rx0, &receiver);
    let stats = stats_of(&agent);
    drop(agent);
    (receiver, stats, sent)
}

#[test]
fn python_exporter_across_a_veth_pair_is_filtered() {
    let test = "python_exporter_across_a_veth_pair_is_filtered";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let Some(ns) = netns_or_skip(test) else {
        return;
    };
    let python = |url: &str, plan: &ExportPlan, ns: &Netns| {
        let report = export_with_python_in_netns(url, plan, ns);
        report.assert_all_ok(plan.total());
        Sent {
            records: report.sent,
            exports: report.batches_ok,
        }
    };
    let (receiver, stats, sent) = across(python, &ns);
    assert_eq!(stats.totals.log_requests, sent.exports as u64);
    check(
        "python across a veth pair",
        &receiver,
        &stats,
        &sent.records,
    );
}

#[test]
fn node_exporter_across_a_veth_pair_is_filtered() {
    let test = "node_exporter_across_a_veth_pair_is_filtered";
    if !kernel_or_skip(test) || node_or_skip(test).is_none() {
        return;
    }
    let Some(ns) = netns_or_skip(test) else {
        return;
    };
    let node = |url: &str, plan: &ExportPlan, ns: &Netns| {
        let report = export_with_node_in_netns(url, plan, ns);
        report.assert_all_ok(plan.total());
        Sent {
            records: report.sent,
            exports: report.batches_ok,
        }
    };
    let (receiver, stats, sent) = across(node, &ns);
    // Node sends every export chunked, and dt walks and edits them all.
    assert!(receiver.requests().iter().all(|r| r.chunked));
    check("node across a veth pair", &receiver, &stats, &sent.records);
}
