//! Requests dt must not edit: each reaches the receiver byte for byte, is counted under its
//! passthrough reason, and moves no drop counter, although the rules WOULD drop its records if
//! it were walked. After it, a normal request on the same keep-alive connection is still edited
//! (chunked requests are in `tests/chunked.rs`).

use std::time::Duration;

use dt_tests::otlp::{encode, sent_records, sized_request, to_otlp_json};
use dt_tests::{
    HttpRequest, HttpRequestBuilder, LogsRequestBuilder, RawClient, Rec, Receiver, RuleSpec, Split,
    TempRules, WAIT, agent_config, evaluate, kernel_or_skip, start_agent, start_agent_with,
    stats_of,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz").attribute("http.route", "/healthz"),
    ]
}

/// Records every rule above would drop.
fn doomed() -> ExportLogsServiceRequest {
    let mut b = LogsRequestBuilder::new().resource("doomed").scope("app");
    for i in 0..20 {
        b = b.record(
            Rec::new(5 + (i % 4), &format!("healthcheck {i}")).attr("http.route", "/healthz"),
        );
    }
    b.build()
}

/// A normal request afterwards: half its records dropped.
fn normal() -> ExportLogsServiceRequest {
    let mut b = LogsRequestBuilder::new().resource("normal").scope("app");
    for i in 0..10 {
        b = b.record(Rec::new(
            if i % 2 == 0 { 5 } else { 9 },
            &format!("after {i}"),
        ));
    }
    b.build()
}

/// Sends `variant` (expecting `status`), then a normal request on the same connection, and
/// checks everything.
fn run_variant(name: &str, reason: &str, variant: HttpRequest, split: Split, status: u16) {
    run_variant_bound(name, reason, variant, split, status, None)
}

fn run_variant_bound(
    name: &str,
    reason: &str,
    variant: HttpRequest,
    split: Split,
    status: u16,
    max_request: Option<u32>,
) {
    let receiver = Receiver::start_v4();
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    if let Some(b) = max_request {
        cfg.max_request = b;
    }
    let agent = start_agent_with(cfg);

    let follow = normal();
    let follow_http = HttpRequestBuilder::logs(encode(&follow)).build();
    let mut client = RawClient::connect(receiver.addr());
    let r1 = client.roundtrip(&variant, &split);
    assert_eq!(
        r1.status, status,
        "{name}: status of the passthrough request"
    );
    let r2 = client.roundtrip(&follow_http, &Split::Whole);
    assert_eq!(r2.status, 200, "{name}: status of the following request");
    let sent = client.sent.clone();
    client.finish();
    let got = receiver.wait_for(2, WAIT);
    receiver.assert_no_more(2, Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    // Byte for byte.
    let raw = &receiver.connection_bytes()[0];
    assert!(
        raw.len() >= variant.len() && raw[..variant.len()] == variant.bytes[..],
        "{name}: the passthrough request was changed on the wire"
    );
    assert_eq!(got[0].body, variant.payload, "{name}: body changed");

    // The following request was edited as usual.
    let expected = evaluate(&rules, &sent_records(&follow));
    assert!(expected.records_dropped > 0);
    assert_eq!(got[1].records(), expected.kept, "{name}: following request");

    // Counters: the reason, and drops only from the following request.
    dt_tests::assert_passthrough_only(&stats, reason, 1);
    assert_eq!(stats.totals.requests, 2, "{name}: requests");
    assert_eq!(
        stats.totals.records_dropped, expected.records_dropped,
        "{name}: records_dropped"
    );
    for want in &expected.rules {
        let rule = stats.rule(&want.name).expect("rule listed");
        assert_eq!(
            rule.dropped, want.dropped,
            "{name}: rule {} dropped",
            want.name
        );
        assert_eq!(
            rule.dropped_bytes, want.dropped_bytes,
            "{name}: rule {} dropped_bytes",
            want.name
        );
        if reason != "malformed" {
            // A malformed body may have been walked up to the error; elsewhere nothing matched.
            assert_eq!(
                rule.matched, want.matched,
                "{name}: rule {} matched",
                want.name
            );
        }
    }
    if reason != "malformed" {
        assert_eq!(
            stats.totals.records, expected.records,
            "{name}: records walked"
        );
    }
    assert_eq!(stats.totals.bytes_in, sent.len() as u64, "{name}: bytes_in");
    assert_eq!(
        stats.totals.bytes_out,
        raw.len() as u64,
        "{name}: bytes_out"
    );
}

#[test]
fn passthrough_gzip() {
    if !kernel_or_skip("passthrough_gzip") {
        return;
    }
    let req = HttpRequestBuilder::logs(encode(&doomed())).gzip().build();
    run_variant("gzip", "compressed", req, Split::head_then_body(2), 200);
}

#[test]
fn passthrough_json() {
    if !kernel_or_skip("passthrough_json") {
        return;
    }
    let req = HttpRequestBuilder::logs(to_otlp_json(&doomed()))
        .content_type(Some("application/json"))
        .build();
    run_variant("json", "json", req, Split::Whole, 200);
}

#[test]
fn passthrough_malformed_protobuf() {
    if !kernel_or_skip("passthrough_malformed_protobuf") {
        return;
    }
    // Valid (and droppable) records first, then a LogRecord cut short: the error is found only
    // after records that would be dropped.
    let mut body = encode(&doomed());
    body.truncate(body.len() - 7);
    let req = HttpRequestBuilder::logs(body).build();
    run_variant("malformed", "malformed", req, Split::head_then_body(3), 400);
}

#[test]
fn passthrough_other_path() {
    if !kernel_or_skip("passthrough_other_path") {
        return;
    }
    let req = HttpRequestBuilder::logs(encode(&doomed()))
        .path("/v1/traces")
        .build();
    run_variant("other path", "not_logs", req, Split::Whole, 200);
}

#[test]
fn passthrough_over_the_bound() {
    if !kernel_or_skip("passthrough_over_the_bound") {
        return;
    }
    // 300 KiB of records that would all be dropped... if the request fitted the 256 KiB bound.
    let big = sized_request("doomed", 300 * 1024, 1500, 1);
    let req = HttpRequestBuilder::logs(encode(&big)).build();
    run_variant("oversize", "oversize", req, Split::head_then_body(6), 200);
}

#[test]
fn passthrough_huge_body_2mib() {
    if !kernel_or_skip("passthrough_huge_body_2mib") {
        return;
    }
    let big = sized_request("doomed", 2 * 1024 * 1024, 4000, 1);
    let req = HttpRequestBuilder::logs(encode(&big)).build();
    run_variant("2 MiB", "oversize", req.clone(), Split::Whole, 200);
    run_variant(
        "2 MiB split",
        "oversize",
        req,
        Split::head_then_body(16),
        200,
    );
}

/// Bodies of 1 and 4 MiB, past the cork capacity, with the bound at its 512 KiB ceiling: they
/// pass through byte-identical, counted as oversize, never truncated or corrupted.
#[test]
fn passthrough_1_and_4_mib_at_the_highest_bound() {
    if !kernel_or_skip("passthrough_1_and_4_mib_at_the_highest_bound") {
        return;
    }
    for mib in [1, 4] {
        let big = sized_request("doomed", mib * 1024 * 1024, 4000, 1);
        let req = HttpRequestBuilder::logs(encode(&big)).build();
        run_variant_bound(
            &format!("{mib} MiB, bound 512 KiB"),
            "oversize",
            req,
            Split::head_then_body(16),
            200,
            Some(dt_ebpf_common::MAX_REQUEST_CEILING),
        );
    }
}

#[test]
fn passthrough_configured_bound() {
    if !kernel_or_skip("passthrough_configured_bound") {
        return;
    }
    // With max_request = 64 KiB, a 100 KiB request is oversize (and the 1 KiB one after it is
    // still edited).
    let big = sized_request("doomed", 100 * 1024, 1000, 1);
    let req = HttpRequestBuilder::logs(encode(&big)).build();
    run_variant_bound(
        "bound 64 KiB",
        "oversize",
        req,
        Split::head_then_body(3),
        200,
        Some(64 * 1024),
    );
}

#[test]
fn passthrough_expect_continue() {
    if !kernel_or_skip("passthrough_expect_continue") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::from_rules(&rules());
    let agent = start_agent(&dir, &[receiver.port()]);
    let req = HttpRequestBuilder::logs(encode(&doomed()))
        .header("Expect", "100-continue")
        .build();
    let mut client = RawClient::connect(receiver.addr());
    client.write_chunks(&[req.head()], Duration::ZERO);
    let interim = client.read_response();
    assert_eq!(interim.status, 100, "the head alone must reach the server");
    client.write_chunks(&[req.wire_body()], Duration::ZERO);
    assert_eq!(client.read_response().status, 200);
    client.finish();
    let got = receiver.wait_for(1, WAIT);
    let stats = stats_of(&agent);
    drop(agent);
    assert_eq!(got[0].body, req.payload);
    assert_eq!(receiver.connection_bytes()[0], req.bytes);
    dt_tests::assert_passthrough_only(&stats, "expect_continue", 1);
    assert_eq!(stats.totals.records_dropped, 0);
}

#[test]
fn passthrough_chunked() {
    if !kernel_or_skip("passthrough_chunked") {
        return;
    }
    let receiver = Receiver::start_v4();
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[receiver.port()]);

    // Connection 1: a chunked request with trailer fields (framing dt does not follow) passes
    // byte for byte, counted `chunked`; its end is not known, so the connection is not followed
    // any more and the next request on it passes untouched too.
    let mut chunked = HttpRequestBuilder::logs(encode(&doomed()))
        .chunked(100)
        .build();
    let n = chunked.bytes.len();
    chunked.bytes.truncate(n - 2);
    chunked.bytes.extend_from_slice(b"X-Checksum: 1\r\n\r\n");
    let follow = HttpRequestBuilder::logs(encode(&normal())).build();
    let mut c1 = RawClient::connect(receiver.addr());
    assert_eq!(
        c1.roundtrip(&chunked, &Split::head_then_body(3)).status,
        200
    );
    assert_eq!(c1.roundtrip(&follow, &Split::Whole).status, 200);
    let sent1 = c1.sent.clone();
    c1.finish();
    // Connection 2: a normal request is edited.
    let mut c2 = RawClient::connect(receiver.addr());
    assert_eq!(c2.roundtrip(&follow, &Split::Whole).status, 200);
    c2.finish();
    let got = receiver.wait_for(3, WAIT);
    let stats = stats_of(&agent);
    drop(agent);

    let raw = receiver.connection_bytes();
    assert_eq!(raw[0], sent1, "the connection passes byte for byte");
    assert!(got[0].chunked);
    assert_eq!(got[0].body, chunked.payload);
    let expected = evaluate(&rules, &sent_records(&normal()));
    assert_eq!(
        got[1].body, follow.payload,
        "the next request passes untouched"
    );
    assert_eq!(got[2].records(), expected.kept);
    let n = stats
        .totals
        .passthrough
        .get("chunked")
        .copied()
        .unwrap_or(0);
    assert_eq!(n, 1, "passthrough.chunked: {:?}", stats.totals.passthrough);
    assert_eq!(stats.totals.records_dropped, expected.records_dropped);
    for want in &expected.rules {
        assert_eq!(
            stats.rule(&want.name).unwrap().dropped,
            want.dropped,
            "{}",
            want.name
        );
    }
}

/// Requests that pass through for a reason an operator can fix are said in the agent's log,
/// with what to do: a batch larger than max_request, OTLP/JSON. (Not every request: the first
/// of a reason at once, then at most every ten minutes; `advice.rs` tests the timing.)
#[test]
fn the_log_says_why_requests_pass_unfiltered_and_what_to_do() {
    if !kernel_or_skip("passthrough advice") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[(
        "r.toml",
        "[[rule]]\nname = \"drop-debug\"\naction = \"drop\"\n[rule.match]\nseverity = \"DEBUG\"\n",
    )]);
    let mut agent =
        dt_tests::agent_process::AgentProcess::new("advice", dir.path(), &[receiver.port()], false);
    agent.write_config("max_request = 4096\n");
    agent.start();
    let mut c = RawClient::connect(([127, 0, 0, 1], receiver.port()).into());
    let big = sized_request("doomed", 8 * 1024, 200, 1);
    let resp = c.roundtrip(
        &HttpRequestBuilder::logs(encode(&big)).build(),
        &Split::Whole,
    );
    assert_eq!(resp.status, 200);
    let json = HttpRequestBuilder::logs(to_otlp_json(&doomed()))
        .content_type(Some("application/json"))
        .build();
    assert_eq!(c.roundtrip(&json, &Split::Whole).status, 200);
    let s = agent.stats();
    assert_eq!(
        (
            s.totals.passthrough["oversize"],
            s.totals.passthrough["json"]
        ),
        (1, 1)
    );
    // Checked every 10 s.
    let within = Duration::from_secs(25);
    agent.wait_log(
        "1 request passed through unfiltered as `oversize`: larger than max_request (4096 \
         bytes): raise max_request (--max-request, at most 524288), or lower the exporters' \
         batch size (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
        1,
        within,
    );
    agent.wait_log(
        "1 request passed through unfiltered as `json`: dt walks OTLP/protobuf only: set the \
         exporters' protocol to http/protobuf",
        1,
        within,
    );
}
