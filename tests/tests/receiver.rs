//! Self-tests of the harness, without any agent or kernel: the receiver, the raw client, the
//! request generator and the real exporter agree with each other.

use std::time::Duration;

use dt_tests::otlp::{encode, filler, sent_records, sized_request, to_otlp_json};
use dt_tests::record::flatten;
use dt_tests::{
    ExportMode, ExportPlan, HttpRequestBuilder, LogsRequestBuilder, RawClient, Rec, Receiver,
    RuleSpec, Split, WAIT, assert_same_records, evaluate, export_with_real_exporter,
    export_with_real_exporter_to,
};

fn sample_request(
    tag: &str,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    LogsRequestBuilder::new()
        .resource("checkout")
        .scope("http")
        .record(Rec::new(5, &format!("debug {tag}")))
        .record(Rec::new(9, &format!("info {tag}")).attr("http.route", "/api"))
        .record(Rec::new(17, &format!("error {tag}")).int_attr("retries", 3))
        .scope("db")
        .record(Rec::new(0, "no severity").no_body())
        .resource("payments")
        .scope("http")
        .record(
            Rec::new(13, "healthcheck")
                .attr("http.route", "/healthz")
                .traced(7),
        )
        .build()
}

#[test]
fn receiver_decodes_raw_client_split_keepalive() {
    let receiver = Receiver::start_v4();
    let mut client = RawClient::connect(receiver.addr());
    let mut expected = Vec::new();
    let splits = [
        Split::Whole,
        Split::head_then_body(3),
        Split::At {
            offsets: vec![1, 5, 17, 40, 41, 90],
            delay: Duration::from_millis(5),
        },
    ];
    for (i, split) in splits.iter().enumerate() {
        let logs = sample_request(&i.to_string());
        expected.extend(flatten(&logs));
        let req = HttpRequestBuilder::logs(encode(&logs)).build();
        let resp = client.roundtrip(&req, split);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("application/x-protobuf"));
        assert!(
            resp.body.is_empty(),
            "empty ExportLogsServiceResponse encodes to 0 bytes"
        );
    }
    let sent = client.sent.clone();
    client.finish();
    let got = receiver.wait_for(3, WAIT);
    assert!(receiver.decode_failures().is_empty());
    assert!(got.iter().all(|r| r.conn == 0));
    assert_eq!(
        got.iter().map(|r| r.seq_on_conn).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(receiver.records(), expected);
    // The receiver saw exactly the bytes written, and rebuilt each request's size exactly.
    assert_eq!(receiver.connection_bytes(), vec![sent.clone()]);
    let wire: usize = got.iter().map(|r| r.wire_len.unwrap()).sum();
    assert_eq!(wire, sent.len());
}

#[test]
fn receiver_ipv6_and_large_bodies() {
    let receiver = Receiver::start_v6();
    assert!(receiver.addr().is_ipv6());
    let mut client = RawClient::connect(receiver.addr());
    let sizes = [150 * 1024, 250 * 1024, 1024 * 1024];
    let mut expected = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let logs = sized_request("big", *size, 1000 + i, 4);
        expected.extend(flatten(&logs));
        let req = HttpRequestBuilder::logs(encode(&logs)).build();
        assert_eq!(
            client.roundtrip(&req, &Split::head_then_body(5)).status,
            200
        );
    }
    client.finish();
    receiver.wait_for(3, WAIT);
    assert!(receiver.decode_failures().is_empty());
    assert_eq!(receiver.records(), expected);
}

#[test]
fn receiver_handles_passthrough_variants() {
    let receiver = Receiver::start_v4();
    let logs = sample_request("v");
    let body = encode(&logs);
    let records = flatten(&logs);
    let mut client = RawClient::connect(receiver.addr());

    // gzip: decoded after gunzip.
    let gz = HttpRequestBuilder::logs(body.clone()).gzip().build();
    assert_ne!(gz.payload, body);
    assert_eq!(client.roundtrip(&gz, &Split::Whole).status, 200);
    // chunked: hyper joins the chunks.
    let ch = HttpRequestBuilder::logs(body.clone()).chunked(7).build();
    assert_eq!(client.roundtrip(&ch, &Split::head_then_body(4)).status, 200);
    // JSON: kept, not decoded.
    let js = HttpRequestBuilder::logs(to_otlp_json(&logs))
        .content_type(Some("application/json"))
        .build();
    assert_eq!(client.roundtrip(&js, &Split::Whole).status, 200);
    // Another path: kept, not decoded.
    let tr = HttpRequestBuilder::logs(body.clone())
        .path("/v1/traces")
        .build();
    assert_eq!(client.roundtrip(&tr, &Split::Whole).status, 200);
    // Malformed protobuf: 400 and a recorded failure.
    let mut bad = body.clone();
    bad.truncate(body.len() - 3);
    let mal = HttpRequestBuilder::logs(bad.clone()).build();
    assert_eq!(client.roundtrip(&mal, &Split::Whole).status, 400);
    // Content-Type with parameters and odd header case still decodes.
    let param = HttpRequestBuilder::logs(body.clone())
        .content_type(Some("Application/X-Protobuf; charset=binary"))
        .build();
    assert_eq!(client.roundtrip(&param, &Split::Whole).status, 200);
    let sent = client.sent.clone();
    client.finish();

    let got = receiver.wait_for(6, WAIT);
    assert_eq!(got[0].records(), records);
    assert_eq!(got[0].body, gz.payload);
    assert_eq!(got[1].records(), records);
    assert!(got[1].chunked);
    assert_eq!(got[1].body, body);
    assert!(got[2].logs.is_none() && got[2].decode_error.is_none());
    assert!(
        std::str::from_utf8(&got[2].body)
            .unwrap()
            .contains("\"resourceLogs\"")
    );
    assert!(got[3].logs.is_none() && got[3].path == "/v1/traces");
    assert_eq!(got[4].body, bad);
    assert!(got[4].decode_error.is_some());
    assert_eq!(got[5].records(), records);
    assert_eq!(receiver.decode_failures().len(), 1);
    assert_eq!(receiver.connection_bytes(), vec![sent]);
}

#[test]
fn receiver_decodes_real_exporter_direct() {
    let receiver = Receiver::start_v4();
    let plan = ExportPlan::mixed(1000, &["checkout", "payments", "inventory"], 100);
    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(plan.total());
    assert_eq!(report.batches_ok, plan.direct_batches());
    let got = receiver.wait_for(plan.direct_batches(), WAIT);
    assert_eq!(got.len(), plan.direct_batches());
    assert!(receiver.decode_failures().is_empty());
    assert!(
        got.iter()
            .all(|r| r.header("content-type") == Some("application/x-protobuf"))
    );
    // The plan, what the exporter says it sent, and what arrived all agree.
    assert_same_records("plan vs exporter", &plan.records(), &report.sent_records());
    assert_same_records("plan vs receiver", &plan.records(), &receiver.records());
    // The exporter's wire size per record matches the model's: dropped_bytes expectations
    // computed from the report are those of the bytes on the wire.
    let rules = [RuleSpec::drop("all")];
    let e = evaluate(&rules, &report.sent);
    let wire_records: u64 = got
        .iter()
        .flat_map(|r| r.logs.as_ref().unwrap().resource_logs.iter())
        .flat_map(|rl| rl.scope_logs.iter())
        .flat_map(|sl| sl.log_records.iter())
        .map(dt_tests::record::log_record_field_len)
        .sum();
    assert_eq!(e.rule("all").dropped_bytes, wire_records);
    // Connection bytes equal the rebuilt request sizes (reqwest writes `name: value`).
    let wire: usize = got.iter().map(|r| r.wire_len.unwrap()).sum();
    assert_eq!(wire as u64, receiver.total_bytes());
}

#[test]
fn receiver_decodes_real_exporter_batch_processor() {
    let receiver = Receiver::start_v4();
    let plan = ExportPlan::mixed(3000, &["checkout", "payments"], 512)
        .with_mode(ExportMode::BatchProcessor);
    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(plan.total());
    let got = receiver.wait_for(report.batches_ok, WAIT);
    assert_eq!(got.len(), report.batches_ok);
    assert!(receiver.decode_failures().is_empty());
    assert_same_records("plan vs receiver", &plan.records(), &receiver.records());
}

#[test]
fn receiver_real_exporter_over_ipv6_localhost() {
    let receiver = Receiver::start_v6();
    let plan = ExportPlan::mixed(200, &["checkout"], 50);
    let report = export_with_real_exporter_to(&receiver.logs_url(), &plan);
    report.assert_all_ok(200);
    receiver.wait_for(plan.direct_batches(), WAIT);
    assert_same_records("v6", &plan.records(), &receiver.records());
}

#[test]
fn receiver_exporter_reports_failures() {
    // Nothing listens here: every batch must come back as an error, not be lost silently.
    let (l, port) = dt_tests::reserve_port();
    drop(l);
    let plan = ExportPlan::mixed(20, &["checkout"], 10);
    let report = export_with_real_exporter(port, &plan);
    assert_eq!(report.batches_ok, 0);
    assert_eq!(report.batches_failed, 2);
    assert_eq!(report.failed_records, 20);
}

#[test]
fn receiver_generator_helpers() {
    assert_eq!(filler(3, 100).len(), 100);
    let r = sized_request("svc", 64 * 1024, 500, 3);
    let n = encode(&r).len();
    assert!((64 * 1024..64 * 1024 + 700).contains(&n), "{n}");
    let sent = sent_records(&r);
    assert!(sent.iter().all(|s| s.field_len > 500));
    // Every third record is DEBUG.
    assert_eq!(
        sent.iter()
            .filter(|s| s.record.severity_number == 5)
            .count(),
        sent.len().div_ceil(3)
    );
}

#[test]
fn receiver_expect_continue() {
    let receiver = Receiver::start_v4();
    let logs = sample_request("expect");
    let req = HttpRequestBuilder::logs(encode(&logs))
        .header("Expect", "100-continue")
        .build();
    let mut client = RawClient::connect(receiver.addr());
    client.write_chunks(&[req.head()], Duration::ZERO);
    assert_eq!(client.read_response().status, 100);
    client.write_chunks(&[req.wire_body()], Duration::ZERO);
    assert_eq!(client.read_response().status, 200);
    client.finish();
    receiver.wait_for(1, WAIT);
    assert_eq!(receiver.records(), flatten(&logs));
}
