//! The kernel's edited requests are accepted by two independent HTTP stacks and protobuf decoders,
//! which agree on every record: hyper + prost (the Rust receiver) and http.server + upb (the
//! Python receiver). One agent hooks both receivers; the same requests, written with the same
//! splits by the raw client, go to each. The edits covered: records dropped at the start, middle
//! and end of a ScopeLogs, whole ScopeLogs and ResourceLogs emptied, several resources and scopes,
//! bodies over 64 KiB, length prefixes left padded (non-minimal varints) by shrinking, and
//! Content-Length losing digits.

use std::time::Duration;

use dt_tests::otlp::{encode, filler, sent_records};
use dt_tests::record::varint_len;
use dt_tests::{
    Expected, HttpRequestBuilder, LogsRequestBuilder, PyReceived, PyReceiver, RawClient, Rec,
    Received, Receiver, RuleSpec, Split, TempRules, WAIT, assert_expected, assert_no_passthrough,
    evaluate, kernel_or_skip, python_or_skip, start_agent, stats_of,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-noise").body_contains("NOISE"),
        RuleSpec::count("count-big").body_contains("BIGBODY"),
        RuleSpec::count("count-survivors"),
    ]
}

fn keep(i: usize) -> Rec {
    Rec::new(9, &format!("kept record {i}")).attr("seq", &i.to_string())
}

fn debug(i: usize) -> Rec {
    Rec::new(5, &format!("debug record {i}")).attr("seq", &i.to_string())
}

fn noise(i: usize) -> Rec {
    Rec::new(13, &format!("NOISE record {i}")).attr("seq", &i.to_string())
}

/// A record whose body is `len` bytes (tagged BIGBODY; also NOISE when `noisy`).
fn big(i: usize, len: usize, noisy: bool) -> Rec {
    let tag = if noisy { "BIGBODY NOISE " } else { "BIGBODY " };
    let body = format!("{tag}{}", filler(i, len - tag.len()));
    Rec::new(if noisy { 17 } else { 10 }, &body).traced(i as u8)
}

/// One named request and the way it is written.
struct Case {
    name: &'static str,
    logs: ExportLogsServiceRequest,
    split: Split,
    /// The levels where the edits must leave a padded (non-minimal) length prefix.
    padded: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let ms = |v: u64| Duration::from_millis(v);
    vec![
        Case {
            name: "drops at start, middle and end",
            logs: LogsRequestBuilder::new()
                .resource("checkout")
                .scope("http")
                .records([
                    debug(0),
                    keep(1),
                    keep(2),
                    debug(3),
                    keep(4),
                    noise(5),
                    keep(6),
                ])
                .record(debug(7))
                .build(),
            split: Split::head_then_body(3),
            padded: &[],
        },
        Case {
            name: "adjacent runs of different rules",
            logs: LogsRequestBuilder::new()
                .resource("checkout")
                .scope("db")
                .records([debug(10), debug(11), noise(12), noise(13), keep(14)])
                .records([
                    noise(15),
                    debug(16),
                    keep(17),
                    keep(18),
                    debug(19),
                    noise(20),
                ])
                .build(),
            split: Split::Whole,
            padded: &[],
        },
        Case {
            name: "several resources and scopes, some emptied",
            logs: LogsRequestBuilder::new()
                .resource("checkout")
                .scope("http")
                .records([debug(30), keep(31), keep(32)])
                .scope("db")
                .records([debug(33), noise(34)]) // emptied
                .scope("cache")
                .records([keep(35), debug(36)])
                .resource("payments") // every record dropped
                .scope("http")
                .records([noise(37), debug(38), debug(39)])
                .scope("db")
                .records([debug(40)])
                .resource("inventory")
                .scope("http")
                .records([keep(41)])
                .scope("db")
                .records([keep(42), keep(43), noise(44)])
                .build(),
            split: Split::At {
                offsets: vec![7, 60, 200, 201, 333],
                delay: ms(15),
            },
            padded: &[],
        },
        Case {
            name: "bodies over 64 KiB, one dropped",
            logs: LogsRequestBuilder::new()
                .resource("checkout")
                .scope("bulk")
                .records([big(50, 70_000, false), big(51, 70_000, true), keep(52)])
                .record(big(53, 66_000, false))
                .build(),
            split: Split::head_then_body(6),
            padded: &[],
        },
        Case {
            // ScopeLogs and ResourceLogs shrink from 3-byte to 1-byte lengths, Content-Length
            // from 5 digits to 3.
            name: "3-byte prefixes shrink below 128",
            logs: LogsRequestBuilder::new()
                .resource("payments")
                .scope("bulk")
                .records([big(60, 20_000, true), keep(61)])
                .build(),
            split: Split::head_then_body(2),
            padded: &["resource_logs", "scope_logs"],
        },
        Case {
            // 2-byte ScopeLogs length shrinks below 128.
            name: "2-byte prefixes shrink below 128",
            logs: LogsRequestBuilder::new()
                .resource("p")
                .scope("s")
                .record(Rec::new(6, &"d".repeat(150)))
                .record(Rec::new(9, "ok"))
                .build(),
            split: Split::At {
                offsets: vec![30],
                delay: ms(10),
            },
            padded: &["scope_logs"],
        },
        Case {
            name: "a kept body over 64 KiB among dropped small ones",
            logs: LogsRequestBuilder::new()
                .resource("inventory")
                .scope("bulk")
                .records((70..75).map(debug))
                .record(big(75, 100_000, false))
                .records((76..81).map(noise))
                .build(),
            split: Split::head_then_body(5),
            padded: &[],
        },
        Case {
            name: "nothing dropped",
            logs: LogsRequestBuilder::new()
                .resource("checkout")
                .scope("http")
                .records((90..100).map(keep))
                .build(),
            split: Split::Whole,
            padded: &[],
        },
        Case {
            name: "everything dropped",
            logs: LogsRequestBuilder::new()
                .resource("checkout")
                .scope("http")
                .records([debug(110), noise(111), debug(112)])
                .resource("payments")
                .scope("db")
                .records([noise(113)])
                .build(),
            split: Split::head_then_body(2),
            padded: &[],
        },
    ]
}

/// A length-delimited field met while walking: its level, value and encoded width.
#[derive(Debug)]
struct Prefix {
    level: &'static str,
    value: u64,
    width: usize,
}

fn read_varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
        assert!(shift < 70, "varint too long");
    }
}

/// Walks `b` as a message, descending into field `descend` (level names in order); collects the
/// length prefixes of those fields and the payloads of the innermost ones.
fn walk(
    b: &[u8],
    levels: &[(&'static str, u64)],
    prefixes: &mut Vec<Prefix>,
    leaves: &mut Vec<Vec<u8>>,
) {
    let mut pos = 0;
    while pos < b.len() {
        let key = read_varint(b, &mut pos);
        let (field, wt) = (key >> 3, key & 7);
        match wt {
            0 => {
                read_varint(b, &mut pos);
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let start = pos;
                let len = read_varint(b, &mut pos) as usize;
                let width = pos - start;
                let payload = &b[pos..pos + len];
                pos += len;
                if let Some(((level, f), rest)) = levels.split_first()
                    && field == *f
                {
                    prefixes.push(Prefix {
                        level,
                        value: len as u64,
                        width,
                    });
                    if rest.is_empty() {
                        leaves.push(payload.to_vec());
                    } else {
                        walk(payload, rest, prefixes, leaves);
                    }
                }
            }
            _ => panic!("wire type {wt} at {pos}"),
        }
    }
    assert_eq!(pos, b.len(), "walk overran");
}

/// The length prefixes of ResourceLogs, ScopeLogs and LogRecord fields in a request body, and
/// the LogRecord payloads in order.
fn prefixes_and_records(body: &[u8]) -> (Vec<Prefix>, Vec<Vec<u8>>) {
    let mut p = Vec::new();
    let mut leaves = Vec::new();
    walk(
        body,
        &[("resource_logs", 1), ("scope_logs", 2), ("log_records", 2)],
        &mut p,
        &mut leaves,
    );
    (p, leaves)
}

fn crc32(b: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(b);
    c.sum()
}

/// Kept records in order, as the test encodes them.
fn kept_encodings(logs: &ExportLogsServiceRequest, e: &Expected) -> Vec<Vec<u8>> {
    let all: Vec<&LogRecord> = logs
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .collect();
    all.iter()
        .zip(&e.dropped_mask)
        .filter(|(_, d)| !**d)
        .map(|(r, _)| r.encode_to_vec())
        .collect()
}

#[test]
fn edited_requests_decode_identically_with_prost_and_upb() {
    let test = "edited_requests_decode_identically_with_prost_and_upb";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let rules = rules();
    let hyper = Receiver::start_v4();
    let py = PyReceiver::start_v4();
    let dir = TempRules::from_rules(&rules);
    let agent = start_agent(&dir, &[hyper.port(), py.port()]);

    let cases = cases();
    let requests: Vec<_> = cases
        .iter()
        .map(|c| HttpRequestBuilder::logs(encode(&c.logs)).build())
        .collect();
    let per_case: Vec<Expected> = cases
        .iter()
        .map(|c| evaluate(&rules, &sent_records(&c.logs)))
        .collect();
    for (c, r) in cases.iter().zip(&requests) {
        assert!(
            r.len() < 256 * 1024,
            "{}: {} bytes is over the agent's request bound",
            c.name,
            r.len()
        );
    }
    let mut expected = Expected::default();
    for _ in 0..2 {
        for e in &per_case {
            expected.merge(e);
        }
    }

    // Two keep-alive connections per receiver, the same requests and splits on each.
    let half = cases.len() / 2;
    let mut sent_total = 0u64;
    for addr in [hyper.addr(), py.addr()] {
        for range in [0..half, half..cases.len()] {
            let mut client = RawClient::connect(addr);
            for i in range {
                let resp = client.roundtrip(&requests[i], &cases[i].split);
                assert_eq!(
                    resp.status, 200,
                    "{addr}: {}: status {} body {:?}",
                    cases[i].name, resp.status, resp.body
                );
            }
            sent_total += client.sent.len() as u64;
            client.finish();
        }
    }
    let n = cases.len();
    let got_hyper: Vec<Received> = hyper.wait_for(n, WAIT);
    hyper.assert_no_more(n, Duration::from_millis(100));
    let got_py: Vec<PyReceived> = py.wait_for(n, WAIT);
    py.assert_no_more(n, Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    assert!(
        hyper.decode_failures().is_empty(),
        "prost could not decode: {:?}",
        hyper.decode_failures()
    );
    assert!(
        py.decode_failures().is_empty(),
        "upb could not decode: {:?}",
        py.decode_failures()
    );

    let mut padded_seen = 0;
    for (i, c) in cases.iter().enumerate() {
        let (h, p, e) = (&got_hyper[i], &got_py[i], &per_case[i]);
        let name = c.name;
        // Both HTTP stacks: same framing, Content-Length matches the body.
        assert_eq!(h.status, 200, "{name}: hyper status");
        assert_eq!(p.status, 200, "{name}: http.server status");
        let h_cl: u64 = h
            .header("content-length")
            .unwrap_or_else(|| panic!("{name}: no Content-Length at hyper"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}: Content-Length at hyper: {e}"));
        assert_eq!(h_cl, h.body.len() as u64, "{name}: hyper Content-Length");
        assert_eq!(
            p.content_length,
            Some(p.body_len),
            "{name}: http.server Content-Length"
        );
        assert!(p.complete && !p.chunked, "{name}: http.server body");
        // The kernel edited both copies the same way.
        assert_eq!(
            p.body_len,
            h.body.len() as u64,
            "{name}: body length hyper vs http.server"
        );
        assert_eq!(
            p.body_crc32,
            crc32(&h.body),
            "{name}: body bytes hyper vs http.server"
        );
        // Both decoders: exactly the kept records, in order.
        let prost_records = h.records();
        assert_eq!(prost_records, e.kept, "{name}: prost records vs model");
        assert_eq!(p.records, e.kept, "{name}: upb records vs model");
        assert_eq!(p.unknown_fields, 0, "{name}: upb met unknown fields");

        // The wire: kept records keep their bytes and order; prefixes say what the walk finds.
        let (prefixes, leaves) = prefixes_and_records(&h.body);
        assert_eq!(
            leaves,
            kept_encodings(&c.logs, e),
            "{name}: kept LogRecords' bytes or order changed"
        );
        let padded: Vec<&Prefix> = prefixes
            .iter()
            .filter(|p| p.width as u64 > varint_len(p.value))
            .collect();
        padded_seen += padded.len();
        for level in c.padded {
            assert!(
                padded.iter().any(|p| p.level == *level),
                "{name}: expected a padded {level} length prefix: {prefixes:?}"
            );
        }
        if e.records_dropped == 0 {
            assert_eq!(
                h.body,
                encode(&c.logs),
                "{name}: nothing dropped but the body changed"
            );
            assert!(
                padded.is_empty(),
                "{name}: nothing dropped but padded: {padded:?}"
            );
        }
    }
    assert!(padded_seen > 0, "no request left a padded length prefix");

    assert_expected(&stats, &expected);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, 2 * n as u64, "totals.requests");
    assert_eq!(
        stats.totals.log_requests,
        2 * n as u64,
        "totals.log_requests"
    );
    assert_eq!(stats.totals.bytes_in, sent_total, "totals.bytes_in");
    assert_eq!(
        stats.totals.bytes_out,
        hyper.total_bytes() + py.total_bytes(),
        "totals.bytes_out vs bytes both receivers read"
    );
    py.stop();
}

/// The wire walker itself (no kernel): prefixes, payloads, and a padded prefix seen as one.
#[test]
fn walker_self_check() {
    let logs = LogsRequestBuilder::new()
        .resource("a")
        .scope("s")
        .records([keep(1), debug(2)])
        .build();
    let body = encode(&logs);
    let (prefixes, leaves) = prefixes_and_records(&body);
    assert_eq!(prefixes.len(), 4);
    assert!(
        prefixes
            .iter()
            .all(|p| p.width as u64 == varint_len(p.value))
    );
    assert_eq!(
        leaves[1],
        logs.resource_logs[0].scope_logs[0].log_records[1].encode_to_vec()
    );
    // A padded prefix is seen as one.
    // Field 1, length 3 written in 2 bytes, holding field 2 of length 1.
    let padded = [0x0a, 0x83, 0x00, 0x12, 0x01, 0x00];
    let mut p = Vec::new();
    let mut l = Vec::new();
    walk(
        &padded,
        &[("resource_logs", 1), ("scope_logs", 2)],
        &mut p,
        &mut l,
    );
    assert_eq!(l, vec![vec![0x00]]);
    assert_eq!(p[0].value, 3);
    assert_eq!(p[0].width, 2);
    assert!(p[0].width as u64 > varint_len(p[0].value));
}
