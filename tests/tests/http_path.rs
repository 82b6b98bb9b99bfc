//! The HTTP path through the kernel: split writes, large bodies, keep-alive, drops at every
//! position of a ScopeLogs, whole requests emptied, several ResourceLogs/ScopeLogs. Each run
//! checks the exact kept records at the receiver, every counter, no passthrough, and
//! `bytes_in`/`bytes_out` against the bytes sent and received (see `Scenario::run`).

use std::time::Duration;

use dt_tests::otlp::{encode, filler, sized_request};
use dt_tests::{
    Conn, HttpRequestBuilder, LogsRequestBuilder, Rec, RuleSpec, Scenario, Split, kernel_or_skip,
};

/// The rules most tests use: a count in front, drops by severity, body and attribute.
fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-errors").severity(">=ERROR", 17..=24),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz").attribute("http.route", "/healthz"),
        RuleSpec::count("count-kept"),
    ]
}

/// One scope of `n` records; records at `drop_at` are DEBUG (dropped), the rest INFO/ERROR.
fn scope_with_drops(service: &str, n: usize, drop_at: &[usize]) -> LogsRequestBuilder {
    let mut b = LogsRequestBuilder::new().resource(service).scope("app");
    for i in 0..n {
        let sev = if drop_at.contains(&i) {
            5
        } else if i % 2 == 0 {
            9
        } else {
            17
        };
        b = b.record(Rec::new(sev, &format!("{service} record {i}")).attr("i", &i.to_string()));
    }
    b
}

#[test]
fn http_split_writes_head_then_body_pieces() {
    if !kernel_or_skip("http_split_writes_head_then_body_pieces") {
        return;
    }
    let logs = scope_with_drops("checkout", 40, &[0, 7, 8, 20, 39]).build();
    let head = HttpRequestBuilder::logs(encode(&logs)).build().head_len;
    Scenario::new("split writes", rules())
        .conn(Conn::new().send(
            logs.clone(),
            Split::HeadThenBody {
                pieces: 4,
                delay: Duration::from_millis(30),
            },
        ))
        // Cut inside the request line, inside a header, just before the blank line, right
        // after the head, then the body in slivers of a few bytes and some larger pieces.
        .conn(Conn::new().send(
            logs,
            Split::At {
                offsets: vec![
                    3,
                    20,
                    head - 2,
                    head,
                    head + 1,
                    head + 2,
                    head + 5,
                    head + 50,
                    head + 51,
                    head + 300,
                    head + 900,
                ],
                delay: Duration::from_millis(10),
            },
        ))
        .run();
}

#[test]
fn http_body_over_64k() {
    if !kernel_or_skip("http_body_over_64k") {
        return;
    }
    // 150 KiB, every 3rd record dropped: pops on both sides of the 64 KiB pull windows.
    let logs = sized_request("bulk", 150 * 1024, 1000, 3);
    Scenario::new("150 KiB", rules())
        .conn(Conn::new().send(logs.clone(), Split::Whole))
        .conn(Conn::new().send(logs, Split::head_then_body(5)))
        .run();
}

#[test]
fn http_body_near_the_bound() {
    if !kernel_or_skip("http_body_near_the_bound") {
        return;
    }
    // Head + body just under the 256 KiB default bound (which counts the whole request).
    let logs = sized_request("bulk", 256 * 1024 - 4096, 2000, 5);
    let total = HttpRequestBuilder::logs(encode(&logs)).build().len();
    assert!(
        total < 256 * 1024 && total > 250 * 1024,
        "request is {total} bytes"
    );
    Scenario::new("near the bound", rules())
        .conn(Conn::new().send(logs.clone(), Split::Whole))
        .conn(Conn::new().send(logs, Split::head_then_body(8)))
        .run();
}

#[test]
fn http_keepalive_several_requests() {
    if !kernel_or_skip("http_keepalive_several_requests") {
        return;
    }
    let mut conn = Conn::new();
    for k in 0..6 {
        let drops: Vec<usize> = (0..10).filter(|i| (i + k) % 3 == 0).collect();
        let split = if k % 2 == 0 {
            Split::Whole
        } else {
            Split::head_then_body(3)
        };
        conn = conn.send(
            scope_with_drops(&format!("svc{k}"), 10, &drops).build(),
            split,
        );
    }
    // A request with nothing to drop between edited ones, and a large one.
    conn = conn.send(scope_with_drops("clean", 10, &[]).build(), Split::Whole);
    conn = conn.send(
        sized_request("bulk", 100 * 1024, 700, 2),
        Split::head_then_body(3),
    );
    conn = conn.send(scope_with_drops("last", 5, &[4]).build(), Split::Whole);
    Scenario::new("keep-alive", rules()).conn(conn).run();
}

#[test]
fn http_drops_at_start_middle_end_of_a_scope() {
    if !kernel_or_skip("http_drops_at_start_middle_end_of_a_scope") {
        return;
    }
    let cases: &[&[usize]] = &[
        &[0],
        &[5],
        &[9],
        &[0, 9],
        &[0, 1, 2],
        &[7, 8, 9],
        &[3, 4, 5, 6],
        &[0, 2, 4, 6, 8],
        &[1, 3, 5, 7, 9],
    ];
    let mut conn = Conn::new();
    for drops in cases {
        conn = conn.send(scope_with_drops("pos", 10, drops).build(), Split::Whole);
    }
    Scenario::new("drop positions", rules()).conn(conn).run();
}

#[test]
fn http_all_records_dropped() {
    if !kernel_or_skip("http_all_records_dropped") {
        return;
    }
    // Every record of the request goes: the receiver must still get a valid request (0 records).
    let one_scope = scope_with_drops("gone", 12, &(0..12).collect::<Vec<_>>()).build();
    let many = LogsRequestBuilder::new()
        .resource("a")
        .scope("s1")
        .record(Rec::new(5, "debug a1"))
        .record(Rec::new(9, "healthcheck a2"))
        .scope("s2")
        .record(Rec::new(13, "warn").attr("http.route", "/healthz"))
        .resource("b")
        .scope("s3")
        .record(Rec::new(1, "trace b1"))
        .build();
    let outcome = Scenario::new("all dropped", rules())
        .conn(
            Conn::new()
                .send(one_scope, Split::Whole)
                .send(many, Split::head_then_body(3))
                // Then an untouched one on the same connection.
                .send(scope_with_drops("after", 3, &[]).build(), Split::Whole),
        )
        .run();
    assert_eq!(outcome.received[0].records().len(), 0);
    assert_eq!(outcome.received[1].records().len(), 0);
    assert_eq!(outcome.received[2].records().len(), 3);
}

#[test]
fn http_multiple_resources_and_scopes() {
    if !kernel_or_skip("http_multiple_resources_and_scopes") {
        return;
    }
    let mut b = LogsRequestBuilder::new();
    for r in 0..4 {
        b = b.resource(&format!("service-{r}"));
        for s in 0..3 {
            b = b.scope(&format!("scope-{s}"));
            for i in 0..(3 + r + s) {
                let sev = ((r * 7 + s * 5 + i * 3) % 24 + 1) as i32;
                let mut rec = Rec::new(sev, &format!("r{r} s{s} i{i} {}", filler(i, 20)));
                if (r + i) % 4 == 0 {
                    rec = rec.attr("http.route", "/healthz");
                }
                if (s + i) % 5 == 1 {
                    rec = Rec::new(sev, &format!("healthcheck r{r} s{s} i{i}"));
                }
                b = b.record(rec);
            }
        }
        // An empty scope too.
        b = b.scope("empty");
    }
    let logs = b.build();
    let rules = vec![
        RuleSpec::count("count-service-1").service("service-1"),
        RuleSpec::drop("drop-service-3-warn")
            .service("service-3")
            .severity("WARN", 13..=16),
        RuleSpec::drop("drop-debug").severity("<INFO", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::drop("drop-healthz").attribute("http.route", "/healthz"),
        RuleSpec::count("count-scope-survivors"),
    ];
    Scenario::new("multi resource", rules)
        .conn(
            Conn::new()
                .send(logs.clone(), Split::Whole)
                .send(logs, Split::head_then_body(4)),
        )
        .run();
}
