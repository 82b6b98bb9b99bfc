//! What real exporters send that dt does not walk, on a hooked port: the OpenTelemetry Python
//! SDK's OTLP/gRPC exporter (grpcio, HTTP/2), its OTLP/HTTP exporter with gzip, and both over TLS.
//! Rules that would drop most records are active; every record must still arrive as the exporter
//! encoded it, every export must succeed on its first try, and `stats` must say why nothing was
//! filtered: `bad_http` once per gRPC or TLS connection (which dt then stops following: it never
//! holds a handshake), `compressed` once per gzipped request.

use std::collections::BTreeSet;
use std::time::Duration;

use dt_tests::{
    Collector, ExportPlan, PyReceiver, PyTransport, RuleSpec, TempRules, WAIT,
    assert_passthrough_only, assert_same_records, export_with_python_as, kernel_or_skip,
    python_or_skip, start_agent, stats_of, tls::TestCa,
};
use dt_tests::{agent_process::AgentProcess, model::rules_toml};

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::drop("drop-debug-and-below").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::count("count-checkout").service("checkout"),
    ]
}

/// Sends `plan` with the Python exporter as `transport` says, through an agent with [`rules`],
/// to `receiver`; checks that it all arrived untouched, and returns the agent's stats and the
/// number of requests and connections the receiver saw.
fn run(
    name: &str,
    plan: &ExportPlan,
    transport: &PyTransport,
    receiver: &PyReceiver,
) -> (dt_agent::stats::Stats, usize, usize) {
    let dir = TempRules::from_rules(&rules());
    let agent = start_agent(&dir, &[receiver.port()]);

    let report = export_with_python_as(&receiver.url(), plan, transport);
    assert!(
        report.exit_ok && report.batches_failed == 0 && report.errors.is_empty(),
        "{name}: exports failed: {:?}\nstderr:\n{}",
        report.errors,
        report.stderr
    );
    assert_eq!(report.sent.len(), plan.total(), "{name}: records exported");
    assert_eq!(
        report.batches_ok,
        plan.direct_batches(),
        "{name}: successful exports"
    );
    // One request per export: a retry would show as more.
    let got = receiver.wait_for(report.batches_ok, WAIT);
    receiver.assert_no_more(report.batches_ok, Duration::from_millis(200));
    let stats = stats_of(&agent);
    drop(agent);

    let failures = receiver.decode_failures();
    assert!(failures.is_empty(), "{name}: receiver: {failures:?}");
    assert!(receiver.all_ok(), "{name}: an export was not answered OK");
    // Nothing was dropped: every record arrived, in order, as the exporter encoded it.
    assert_same_records(
        &format!("{name}: plan vs Python exporter"),
        &plan.records(),
        &report.sent_records(),
    );
    assert_same_records(
        &format!("{name}: {} receiver", receiver.kind()),
        &report.sent_records(),
        &receiver.records(),
    );
    let conns: BTreeSet<u64> = got.iter().map(|r| r.conn).collect();

    // No record was walked and no rule saw one.
    let t = &stats.totals;
    assert_eq!(
        (t.log_requests, t.records, t.records_dropped),
        (0, 0, 0),
        "{name}: {t:?}"
    );
    for r in &stats.rules {
        assert_eq!(
            (r.matched, r.dropped),
            (0, 0),
            "{name}: rule {} counted a record",
            r.name
        );
    }
    assert_eq!(t.bytes_in, t.bytes_out, "{name}: bytes changed: {t:?}");
    // The gRPC receiver sees a message after gRPC's own decompression; the others, the body as
    // sent.
    let body_bytes: u64 = if transport.grpc && transport.gzip {
        0
    } else {
        got.iter().map(|r| r.body_len).sum()
    };
    assert!(
        t.bytes_in > body_bytes,
        "{name}: bytes_in {} vs the bodies' {body_bytes}",
        t.bytes_in
    );
    (stats, got.len(), conns.len())
}

#[test]
fn python_grpc_exporter_passes_untouched_counted_bad_http() {
    let test = "python_grpc_exporter_passes_untouched_counted_bad_http";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    // Two services: the script makes an exporter, so a gRPC channel and connection, for each.
    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 200);
    for gzip in [false, true] {
        let name = format!("python OTLP/gRPC (gzip {gzip})");
        let receiver = PyReceiver::start_grpc_v4();
        let transport = PyTransport {
            grpc: true,
            gzip,
            ca: None,
        };
        let (stats, requests, conns) = run(&name, &plan, &transport, &receiver);
        // dt sees the HTTP/2 preface as a request head it does not follow.
        assert_not_followed(&name, &stats, requests, conns);
        receiver.stop();
    }
}

/// Each connection was counted `bad_http` once, as one request, and not followed after: every
/// later export on it passed uncounted, its bytes as `untracked_bytes`.
fn assert_not_followed(name: &str, stats: &dt_agent::stats::Stats, requests: usize, conns: usize) {
    assert_eq!(conns, 2, "{name}: connections (one per service)");
    assert_passthrough_only(stats, "bad_http", conns as u64);
    assert_eq!(stats.totals.requests, conns as u64, "{name}");
    assert_eq!(
        stats.totals.untracked_bytes, stats.totals.bytes_in,
        "{name}: {:?}",
        stats.totals
    );
    assert!(
        requests >= 2 * conns,
        "{name}: several exports a connection"
    );
}

#[test]
fn python_tls_exporters_pass_untouched_counted_bad_http() {
    let test = "python_tls_exporters_pass_untouched_counted_bad_http";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 200);
    let ca = TestCa::new("other-transports");
    for grpc in [false, true] {
        let name = format!("python over TLS (gRPC {grpc})");
        let receiver = PyReceiver::start_tls_v4(grpc, &ca);
        assert!(receiver.url().starts_with("https://"));
        let transport = PyTransport {
            grpc,
            gzip: false,
            ca: Some(ca.ca.clone()),
        };
        let (stats, requests, conns) = run(&name, &plan, &transport, &receiver);
        // The ClientHello's first byte is no HTTP method: the connection is let go at once,
        // never held waiting for a head.
        assert_not_followed(&name, &stats, requests, conns);
        receiver.stop();
    }
}

#[test]
fn python_gzip_exporter_passes_untouched_counted_compressed() {
    let test = "python_gzip_exporter_passes_untouched_counted_compressed";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let plan = ExportPlan::mixed(3_000, &["checkout", "payments"], 200);
    let name = "python OTLP/HTTP with gzip";
    let receiver = PyReceiver::start_v4();
    let transport = PyTransport {
        gzip: true,
        ..PyTransport::default()
    };
    let (stats, requests, _) = run(name, &plan, &transport, &receiver);
    for r in receiver.results() {
        assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{name}");
    }
    assert_passthrough_only(&stats, "compressed", requests as u64);
    assert_eq!(stats.totals.requests, requests as u64, "{name}");
    assert_eq!(
        stats.totals.untracked_bytes, 0,
        "{name}: {:?}",
        stats.totals
    );
    receiver.stop();
}

#[test]
fn agent_warns_when_the_grpc_port_is_hooked() {
    let test = "agent_warns_when_the_grpc_port_is_hooked";
    if !kernel_or_skip(test) {
        return;
    }
    let rules = TempRules::with_files(&[("50-test.toml", &rules_toml(&rules()))]);
    let mut agent = AgentProcess::new("grpcport", rules.path(), &[4317], false);
    agent.start();
    agent.wait_log("port 4317 is hooked, OTLP/gRPC's port", 1, WAIT);
    let log = agent.log();
    assert!(
        log.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf") && log.contains("(4318)"),
        "{log}"
    );
}
