//! Chunked requests, through the kernel: `Transfer-Encoding: chunked` requests of one data chunk
//! (how the Node.js SDK sends) are walked and edited like Content-Length ones, the chunk size
//! rewritten in place; requests of several chunks are walked too, and rewritten as one chunk
//! when edited. The connection stays followed, whatever the next request's framing. Framing dt
//! does not follow passes byte for byte.

use std::time::Duration;

use dt_tests::otlp::{encode, sent_records};
use dt_tests::{
    HttpRequest, HttpRequestBuilder, LogsRequestBuilder, RawClient, Rec, Receiver, RuleSpec, Split,
    TempRules, WAIT, assert_matched_dropped, evaluate, kernel_or_skip, start_agent, stats_of,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthz").attribute("http.route", "/healthz"),
    ]
}

fn logs(seed: u64, n: usize) -> ExportLogsServiceRequest {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut b = LogsRequestBuilder::new().resource("svc").scope("app");
    for i in 0..n {
        let mut r = Rec::new(rng.random_range(1..=24), &format!("record {seed}/{i}"));
        if rng.random_bool(0.2) {
            r = r.attr("http.route", "/healthz");
        }
        b = b.record(r);
    }
    b.build()
}

/// A chunked request whose body is one chunk: `{size:x}[ext]\r\n<body>\r\n0\r\n\r\n`, written
/// with `digits` hex digits (leading zeros) and an optional chunk extension.
fn one_chunk(body: &[u8], digits: usize, ext: &str, upper: bool) -> HttpRequest {
    let size = if upper {
        format!("{:0digits$X}", body.len())
    } else {
        format!("{:0digits$x}", body.len())
    };
    let head = "POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(b"\r\n0\r\n\r\n");
    HttpRequest {
        bytes,
        head_len: head.len(),
        payload: body.to_vec(),
    }
}

/// Random cut points inside `req`.
fn random_split(rng: &mut ChaCha8Rng, req: &HttpRequest) -> Split {
    let n = rng.random_range(0..6);
    Split::At {
        offsets: (0..n).map(|_| rng.random_range(1..req.len())).collect(),
        delay: Duration::from_millis(5),
    }
}

/// Single-chunk requests in random pieces, mixed on keep-alive connections with
/// Content-Length ones: every one is edited exactly (the receiver decodes the kept records;
/// counters exact), and nothing passes through.
#[test]
fn single_chunk_requests_are_edited_and_the_connection_followed() {
    if !kernel_or_skip("single_chunk_requests_are_edited_and_the_connection_followed") {
        return;
    }
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut sent = Vec::new();
    for conn in 0..4 {
        let mut client = RawClient::connect(receiver.addr());
        for i in 0..6 {
            let seed = conn * 100 + i;
            let req = logs(seed, rng.random_range(1..40));
            let body = encode(&req);
            let http = match (conn + i) % 3 {
                0 => HttpRequestBuilder::logs(body).build(),
                1 => one_chunk(&body, rng.random_range(1..16), "", rng.random_bool(0.5)),
                _ => one_chunk(&body, 4, ";name=value", false),
            };
            let split = random_split(&mut rng, &http);
            assert_eq!(client.roundtrip(&http, &split).status, 200);
            sent.push(req);
        }
        client.finish();
    }
    let got = receiver.wait_for(sent.len(), WAIT);
    let stats = stats_of(&agent);
    let mut records = Vec::new();
    for (i, req) in sent.iter().enumerate() {
        let recs = sent_records(req);
        let want = evaluate(&rules, &recs);
        assert_eq!(got[i].records(), want.kept, "request {i}");
        assert!(got[i].decode_error.is_none(), "request {i}");
        records.extend(recs);
    }
    let want = evaluate(&rules, &records);
    assert!(
        stats.totals.passthrough.values().all(|&n| n == 0),
        "nothing passes through: {:?}",
        stats.totals.passthrough
    );
    assert_eq!(stats.totals.log_requests, sent.len() as u64);
    assert_eq!(stats.totals.records_dropped, want.records_dropped);
    assert_matched_dropped("chunked", &stats, &want);
    assert_eq!(stats.totals.in_flight, 0);
}

/// The exact bytes of an edited single-chunk request: the same head, the chunk size rewritten
/// in its own digits, the kept records, the same last chunk.
#[test]
fn an_edited_chunk_keeps_its_framing() {
    if !kernel_or_skip("an_edited_chunk_keeps_its_framing") {
        return;
    }
    let rules = vec![RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8)];
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);
    let mut b = LogsRequestBuilder::new().resource("svc").scope("app");
    for i in 0..50 {
        b = b.record(Rec::new(if i % 2 == 0 { 5 } else { 9 }, &format!("r{i}")));
    }
    let req = b.build();
    let body = encode(&req);
    let http = one_chunk(&body, 5, ";a=b", false);
    let mut client = RawClient::connect(receiver.addr());
    assert_eq!(
        client.roundtrip(&http, &Split::head_then_body(4)).status,
        200
    );
    client.finish();
    let got = receiver.wait_for(1, WAIT);
    let wire = &receiver.connection_bytes()[0];
    drop(agent);
    let new_body = &got[0].body;
    assert!(new_body.len() < body.len());
    let mut want = http.bytes[..http.head_len].to_vec();
    want.extend_from_slice(format!("{:05x};a=b\r\n", new_body.len()).as_bytes());
    want.extend_from_slice(new_body);
    want.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(
        String::from_utf8_lossy(wire),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(got[0].records(), evaluate(&rules, &sent_records(&req)).kept);
}

/// `body` split into chunks at `cuts` (sorted, inside the body), each size line with a random
/// number of leading zeros and sometimes an extension.
fn chunks_at(rng: &mut ChaCha8Rng, body: &[u8], cuts: &[usize]) -> HttpRequest {
    let head = "POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let mut bytes = head.as_bytes().to_vec();
    let mut at = 0;
    for &end in cuts.iter().chain(std::iter::once(&body.len())) {
        let zeros = rng.random_range(0..3);
        let ext = if rng.random_bool(0.3) { ";x=y" } else { "" };
        bytes.extend_from_slice(format!("{}{:x}{ext}\r\n", "0".repeat(zeros), end - at).as_bytes());
        bytes.extend_from_slice(&body[at..end]);
        bytes.extend_from_slice(b"\r\n");
        at = end;
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    HttpRequest {
        bytes,
        head_len: head.len(),
        payload: body.to_vec(),
    }
}

/// Requests of 2 to 16 chunks split at random places, sent in random pieces, are edited
/// exactly: rewritten as one chunk (its size in as many hex digits as the data's length needs),
/// the kept records in it; the request after each on the connection is walked too.
#[test]
fn several_chunks_are_edited_exactly_and_the_connection_followed() {
    if !kernel_or_skip("several_chunks_are_edited_exactly_and_the_connection_followed") {
        return;
    }
    let rules = rules();
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let rounds = 12;
    let mut c = RawClient::connect(receiver.addr());
    let mut want_records = 0usize;
    for round in 0..rounds {
        let req = logs(100 + round, rng.random_range(5..60));
        let body = encode(&req);
        let n = rng.random_range(2..=16).min(body.len());
        let mut cuts: Vec<usize> = (0..n - 1)
            .map(|_| rng.random_range(1..body.len()))
            .collect();
        cuts.sort();
        cuts.dedup();
        let http = chunks_at(&mut rng, &body, &cuts);
        let split = random_split(&mut rng, &http);
        assert_eq!(c.roundtrip(&http, &split).status, 200, "round {round}");
        let next = logs(200 + round, 10);
        let next_http = if round % 2 == 0 {
            HttpRequestBuilder::logs(encode(&next)).build()
        } else {
            one_chunk(&encode(&next), 4, "", false)
        };
        assert_eq!(c.roundtrip(&next_http, &Split::Whole).status, 200);
        want_records += 2;
        let got = receiver.wait_for(want_records, WAIT);
        let (edited, after) = (&got[want_records - 2], &got[want_records - 1]);
        assert_eq!(
            edited.records(),
            evaluate(&rules, &sent_records(&req)).kept,
            "round {round}: the kept records"
        );
        assert_eq!(
            after.records(),
            evaluate(&rules, &sent_records(&next)).kept,
            "round {round}: the request after it is walked"
        );
        // Nothing removed: the request passed as sent.
        let framed = if edited.body == body {
            http.bytes[http.head_len..].to_vec()
        } else {
            let digits = format!("{:x}", body.len()).len();
            let mut f = format!("{:0digits$x}\r\n", edited.body.len()).into_bytes();
            f.extend_from_slice(&edited.body);
            f.extend_from_slice(b"\r\n0\r\n\r\n");
            f
        };
        let wire = &receiver.connection_bytes()[0];
        let head = &http.bytes[..http.head_len];
        let at = wire
            .windows(head.len() + framed.len())
            .rposition(|w| w[..head.len()] == *head && w[head.len()..] == framed[..]);
        assert!(at.is_some(), "round {round}: rewritten as one chunk");
    }
    c.finish();
    let stats = stats_of(&agent);
    assert_eq!(
        stats
            .totals
            .passthrough
            .get("chunked")
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(stats.totals.in_flight, 0);
}

/// Framing dt follows but does not change: several chunks that no rule edits pass byte for
/// byte, their framing as sent. Framing dt does not follow (trailer fields) passes, and the
/// connection is not followed any more.
#[test]
fn what_passes_as_chunked() {
    if !kernel_or_skip("what_passes_as_chunked") {
        return;
    }
    let rules = vec![RuleSpec::count("count-all")];
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&dir, &[receiver.port()]);
    let req = logs(7, 30);
    let body = encode(&req);
    let follow = logs(8, 20);

    // Several chunks, counted but not edited, then a Content-Length request: both walked.
    let multi = HttpRequestBuilder::logs(body.clone()).chunked(100).build();
    let mut c1 = RawClient::connect(receiver.addr());
    assert_eq!(c1.roundtrip(&multi, &Split::head_then_body(3)).status, 200);
    let next = HttpRequestBuilder::logs(encode(&follow)).build();
    assert_eq!(c1.roundtrip(&next, &Split::Whole).status, 200);
    c1.finish();

    // Trailer fields: passes, and so does everything after it on the connection.
    let mut trailer = one_chunk(&body, 3, "", false);
    let n = trailer.bytes.len();
    trailer.bytes.truncate(n - 2);
    trailer.bytes.extend_from_slice(b"X-Checksum: 1\r\n\r\n");
    let mut c2 = RawClient::connect(receiver.addr());
    assert_eq!(c2.roundtrip(&trailer, &Split::Whole).status, 200);
    assert_eq!(c2.roundtrip(&next, &Split::Whole).status, 200);
    c2.finish();

    let got = receiver.wait_for(4, WAIT);
    let stats = stats_of(&agent);
    let raw = receiver.connection_bytes();
    assert_eq!(
        raw[0],
        [multi.bytes.clone(), next.bytes.clone()].concat(),
        "several chunks nothing edits pass byte for byte"
    );
    assert_eq!(got[0].body, body);
    assert_eq!(raw[1], [trailer.bytes.clone(), next.bytes.clone()].concat());
    assert_eq!(stats.totals.passthrough.get("chunked"), Some(&1));
    assert_eq!(stats.rules[0].matched, (30 + 20) as u64);
    assert_eq!(stats.totals.in_flight, 0);
}

/// Chunked requests dt does not walk (the rip cord pulled, an empty rule set, another path)
/// pass at once, byte for byte, each counted under its own reason; their framing is followed
/// as they pass, so the next request on the same keep-alive connection is walked again, as
/// the Node.js SDK's connections need after `enable` or a first push.
#[test]
fn chunked_requests_not_walked_pass_and_the_connection_stays_followed() {
    if !kernel_or_skip("chunked_requests_not_walked_pass_and_the_connection_stays_followed") {
        return;
    }
    let rules = rules();
    let empty = TempRules::from_rules(&[]);
    let full = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let mut agent = start_agent(&empty, &[receiver.port()]);
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let mut client = RawClient::connect(receiver.addr());
    // (request, whether it is walked)
    let mut sent: Vec<(ExportLogsServiceRequest, bool)> = Vec::new();
    let send = |client: &mut RawClient, rng: &mut ChaCha8Rng, seed: u64, multi: bool| {
        let req = logs(seed, rng.random_range(5..40));
        let body = encode(&req);
        let http = if multi {
            HttpRequestBuilder::logs(body).chunked(97).build()
        } else {
            one_chunk(&body, rng.random_range(1..6), "", false)
        };
        let split = random_split(rng, &http);
        assert_eq!(
            client.roundtrip(&http, &split).status,
            200,
            "request {seed}"
        );
        req
    };

    // No rules: passes, counted `no_rules`.
    for i in 0..3 {
        sent.push((send(&mut client, &mut rng, i, i == 1), false));
    }
    // The first push: the same connection's requests are walked.
    agent.reload(full.path()).expect("reload");
    for i in 10..13 {
        sent.push((send(&mut client, &mut rng, i, i == 11), true));
    }
    // The rip cord: they pass, counted `disabled`, in pieces of every size.
    agent.set_enabled(false).expect("disable");
    for i in 20..24 {
        sent.push((send(&mut client, &mut rng, i, i % 2 == 0), false));
    }
    // A chunked request on another path, with the cord back: passes, counted `not_logs`.
    agent.set_enabled(true).expect("enable");
    let traces = HttpRequestBuilder::logs(vec![0x0a; 300])
        .path("/v1/traces")
        .chunked(64)
        .build();
    assert_eq!(
        client.roundtrip(&traces, &Split::head_then_body(4)).status,
        200
    );
    for i in 30..33 {
        sent.push((send(&mut client, &mut rng, i, i == 31), true));
    }
    client.finish();

    let got = receiver.wait_for(sent.len() + 1, WAIT);
    let stats = stats_of(&agent);
    let mut walked = Vec::new();
    let logs_got: Vec<_> = got.iter().filter(|r| r.path == "/v1/logs").collect();
    assert_eq!(logs_got.len(), sent.len());
    for (i, ((req, walk), r)) in sent.iter().zip(&logs_got).enumerate() {
        let recs = sent_records(req);
        if *walk {
            assert_eq!(
                r.records(),
                evaluate(&rules, &recs).kept,
                "request {i} is edited"
            );
            walked.extend(recs);
        } else {
            assert_eq!(r.body, encode(req), "request {i} passes byte for byte");
        }
    }
    let pt = &stats.totals.passthrough;
    assert_eq!(pt.get("no_rules"), Some(&3), "{pt:?}");
    assert_eq!(pt.get("disabled"), Some(&4), "{pt:?}");
    assert_eq!(pt.get("not_logs"), Some(&1), "{pt:?}");
    assert_eq!(pt.get("chunked").copied().unwrap_or(0), 0, "{pt:?}");
    assert_eq!(
        stats.totals.untracked_bytes, 0,
        "the connection is followed throughout"
    );
    assert_eq!(stats.totals.requests, sent.len() as u64 + 1);
    assert_eq!(
        stats.totals.bytes_out,
        receiver.connection_bytes()[0].len() as u64,
        "every byte that left is counted once"
    );
    let want = evaluate(&rules, &walked);
    assert_eq!(stats.totals.records_dropped, want.records_dropped);
    assert_matched_dropped("chunked", &stats, &want);
    assert_eq!(stats.totals.in_flight, 0);
}
