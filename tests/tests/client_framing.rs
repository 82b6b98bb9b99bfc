//! How the real OTLP/HTTP clients frame `POST /v1/logs` (no kernel needed): each exporter sends
//! to a raw capture listener on 127.0.0.1 that records the exact bytes and answers 200 with an
//! empty protobuf body. Run with `--nocapture` to see the framing printed.
//!
//! - Node.js SDK (@opentelemetry/exporter-logs-otlp-proto): `Transfer-Encoding: chunked`, no
//!   Content-Length, the whole body in one chunk, then `0\r\n\r\n`; keep-alive.
//! - Python SDK (requests/urllib3) and Rust `opentelemetry-otlp` (reqwest/hyper):
//!   `Content-Length`; keep-alive.
//! - A collector's exporter (Rotel, hyper): `Content-Length`, keep-alive, the body gzipped.

use std::time::Duration;

use dt_tests::collector::{Rotel, collector_or_skip, wait_records};
use dt_tests::{
    CaptureListener, CapturedRequest, ExportPlan, WAIT, assert_same_records, export_with_node,
    export_with_python, export_with_real_exporter_to, node_or_skip, python_or_skip,
};

fn check_common(who: &str, r: &CapturedRequest) {
    assert_eq!(r.request_line, "POST /v1/logs HTTP/1.1", "{who}");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-protobuf"),
        "{who}: Content-Type"
    );
    assert_eq!(
        r.header("content-encoding"),
        None,
        "{who}: no compression expected"
    );
}

/// The Node.js exporter's requests: chunked, one data chunk holding the whole body (exactly the
/// exporter's serialized request), `0\r\n\r\n` right after it, no trailers.
fn check_node_chunked(r: &CapturedRequest, body: &[u8]) {
    let who = format!("node request {}/{}", r.conn, r.seq_on_conn);
    check_common(&who, r);
    assert!(r.is_chunked(), "{who}: not chunked:\n{}", r.framing());
    assert_eq!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "{who}: Transfer-Encoding"
    );
    assert_eq!(r.header("content-length"), None, "{who}: Content-Length");
    assert_eq!(r.header("connection"), Some("keep-alive"), "{who}");
    assert_eq!(
        r.body, body,
        "{who}: body vs the exporter's serialized request"
    );
    assert!(r.trailers.is_empty(), "{who}: trailers {:?}", r.trailers);
    assert_eq!(
        r.chunk_lines,
        vec![format!("{:x}", body.len()), "0".to_string()],
        "{who}: one chunk of the whole body, lowercase hex, no extensions"
    );
    assert!(r.raw.ends_with(b"\r\n0\r\n\r\n"), "{who}: the end");
    // Head, size line, data, CRLF, last chunk: nothing else on the wire.
    let size_line = format!("{:x}\r\n", body.len()).len();
    assert_eq!(
        r.raw.len(),
        r.head_len + size_line + body.len() + 2 + 5,
        "{who}"
    );
}

#[test]
fn node_exporter_sends_chunked_requests() {
    let test = "node_exporter_sends_chunked_requests";
    if node_or_skip(test).is_none() {
        return;
    }
    // One export of 10 records.
    let cap = CaptureListener::start();
    let plan = ExportPlan::mixed(10, &["checkout"], 10);
    let report = export_with_node(&cap.url(), &plan);
    report.assert_all_ok(10);
    assert_eq!(report.batches_ok, 1);
    let got = cap.wait_requests(1, WAIT);
    println!(
        "Node.js {} (exporter {}), one export of 10 records:\n{}",
        report.versions["node"],
        report.versions["exporter-logs-otlp-proto"],
        got[0].framing()
    );
    println!(
        "  head + first bytes: {:?}",
        String::from_utf8_lossy(&got[0].raw[..got[0].head_len + 8])
    );
    check_node_chunked(&got[0], &report.bodies[0]);
    assert!(cap.errors().is_empty(), "{:?}", cap.errors());

    // Larger exports: 3 of 2,000 records each (about 150 KB), one exporter, one after another.
    let cap = CaptureListener::start();
    let plan = ExportPlan::mixed(6_000, &["checkout"], 2_000);
    let report = export_with_node(&cap.url(), &plan);
    report.assert_all_ok(6_000);
    assert_eq!(report.batches_ok, 3);
    let got = cap.wait_requests(3, WAIT);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(cap.requests().len(), 3, "no further requests");
    for (r, body) in got.iter().zip(&report.bodies) {
        println!("Node.js, one export of 2,000 records:\n{}", r.framing());
        check_node_chunked(r, body);
    }
    // Keep-alive: the three exports share one connection.
    assert_eq!(cap.connections(), 1, "connections for 3 exports");
    assert_eq!(
        got.iter()
            .map(|r| (r.conn, r.seq_on_conn))
            .collect::<Vec<_>>(),
        vec![(0, 0), (0, 1), (0, 2)]
    );
    assert!(cap.errors().is_empty(), "{:?}", cap.errors());
}

fn check_content_length(who: &str, r: &CapturedRequest) {
    check_common(who, r);
    check_framed_by_length(who, r);
}

/// Framed by `Content-Length`, and nothing but the head and the body on the wire.
fn check_framed_by_length(who: &str, r: &CapturedRequest) {
    assert!(!r.is_chunked(), "{who}: chunked:\n{}", r.framing());
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "{who}: Content-Length"
    );
    assert_eq!(r.raw.len(), r.head_len + r.body.len(), "{who}");
}

#[test]
fn python_exporter_sends_content_length() {
    let test = "python_exporter_sends_content_length";
    if python_or_skip(test).is_none() {
        return;
    }
    let cap = CaptureListener::start();
    let plan = ExportPlan::mixed(3_000, &["checkout"], 1_000);
    let report = export_with_python(&cap.url(), &plan);
    report.assert_all_ok(3_000);
    let got = cap.wait_requests(3, WAIT);
    for r in &got {
        println!(
            "Python SDK {}:\n{}",
            report.versions["opentelemetry_sdk"],
            r.framing()
        );
        check_content_length("python", r);
    }
    assert_eq!(
        cap.connections(),
        1,
        "keep-alive: connections for 3 exports"
    );
    assert!(cap.errors().is_empty(), "{:?}", cap.errors());
}

#[test]
fn rust_exporter_sends_content_length() {
    let cap = CaptureListener::start();
    let plan = ExportPlan::mixed(3_000, &["checkout"], 1_000);
    let report = export_with_real_exporter_to(&cap.url(), &plan);
    report.assert_all_ok(3_000);
    let got = cap.wait_requests(3, WAIT);
    for r in &got {
        println!("Rust opentelemetry-otlp:\n{}", r.framing());
        check_content_length("rust", r);
    }
    assert_eq!(
        cap.connections(),
        1,
        "keep-alive: connections for 3 exports"
    );
    assert!(cap.errors().is_empty(), "{:?}", cap.errors());
}

/// A collector's exporter (Rotel 0.0.1a15, hyper) forwarding what the Python SDK sent it:
/// `Content-Length`, keep-alive, and a gzipped body whatever its compression flags say (the
/// OpenTelemetry Collector's `otlphttp` exporter gzips by default too).
#[test]
fn collector_exporter_sends_gzip_with_content_length() {
    let test = "collector_exporter_sends_gzip_with_content_length";
    let (Some(rotel), Some(_)) = (collector_or_skip(test), python_or_skip(test)) else {
        return;
    };
    for flags in [&[][..], &["--otlp-exporter-logs-compression", "none"][..]] {
        let cap = CaptureListener::start();
        let mut collector =
            Rotel::start(&rotel, &format!("http://127.0.0.1:{}", cap.port()), flags);
        let plan = ExportPlan::mixed(1_000, &["checkout", "payments"], 250);
        let report = export_with_python(&collector.logs_url(), &plan);
        report.assert_all_ok(1_000);
        // The collector answers at once and forwards in its own batches.
        let (got, records) = wait_records(&cap, 1_000, WAIT);
        collector.stop();
        assert_same_records(
            &format!("collector {flags:?}: sent vs forwarded"),
            &report.sent_records(),
            &records,
        );
        for r in &got {
            println!("Rotel, flags {flags:?}:\n{}", r.framing());
            let who = format!("rotel {flags:?} request {}/{}", r.conn, r.seq_on_conn);
            assert_eq!(r.request_line, "POST /v1/logs HTTP/1.1", "{who}");
            assert_eq!(
                r.header("content-type"),
                Some("application/x-protobuf"),
                "{who}"
            );
            assert_eq!(r.header("content-encoding"), Some("gzip"), "{who}");
            check_framed_by_length(&who, r);
        }
        println!(
            "Rotel, flags {flags:?}: {} requests on {} connections",
            got.len(),
            cap.connections()
        );
        assert!(cap.errors().is_empty(), "{:?}", cap.errors());
    }
}
