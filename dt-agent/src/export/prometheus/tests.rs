//! Tests of the prometheus output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use super::*;
use crate::export::families::testdata;

/// A parsed exposition: families (name → (type, help)) and samples.
#[derive(Debug, Default)]
struct Parsed {
    families: BTreeMap<String, (String, String)>,
    /// (name, labels) → value, where labels are unescaped.
    samples: BTreeMap<(String, BTreeMap<String, String>), u64>,
    /// Family names in order of their TYPE lines.
    order: Vec<String>,
}

impl Parsed {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }
}

/// A strict little parser for the 0.0.4 text format as dt writes it: every sample belongs to
/// the family whose HELP and TYPE came just before; label values unescape `\\`, `\"`, `\n`.
fn parse(text: &str) -> Parsed {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut p = Parsed::default();
    let mut current: Option<String> = None;
    let mut pending_help: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            pending_help = Some((name.to_string(), unescape_help(help)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            let (hname, help) = pending_help.take().expect("HELP before TYPE");
            assert_eq!(hname, name, "HELP and TYPE name the same family");
            assert!(
                p.families
                    .insert(name.to_string(), (kind.to_string(), help))
                    .is_none(),
                "family {name} twice"
            );
            p.order.push(name.to_string());
            current = Some(name.to_string());
        } else if line.starts_with('#') || line.is_empty() {
            panic!("unexpected line {line:?}");
        } else {
            let (name, labels, rest) = parse_sample(line);
            assert_eq!(Some(&name), current.as_ref(), "sample outside its family");
            assert!(valid_metric_name(&name), "{name}");
            let value: u64 = rest
                .parse()
                .unwrap_or_else(|e| panic!("value {rest:?} in {line:?}: {e}"));
            assert!(
                p.samples.insert((name, labels), value).is_none(),
                "duplicate series {line:?}"
            );
        }
    }
    p
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn unescape_help(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => panic!("bad escape in HELP: {other:?}"),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name{k="v",...} value` → (name, labels, value text).
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, &str) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        loop {
            // label name
            let mut lname = String::new();
            let mut end = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                if c == '}' && lname.is_empty() {
                    end = Some(i);
                    break;
                }
                lname.push(c);
            }
            if let Some(i) = end {
                rest = &r[i + 1..];
                break;
            }
            assert!(valid_metric_name(&lname) && !lname.contains(':'), "{lname}");
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value").1 {
                    '\\' => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw newline in a label value"),
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(lname.clone(), value).is_none(),
                "label {lname} twice"
            );
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                other => panic!("after a label value: {other:?} in {line:?}"),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("one space before the value in {line:?}"));
    (name, labels, value)
}

const RULE_COUNTERS: [&str; 5] = [
    "dt_rule_matched_total",
    "dt_rule_kept_total",
    "dt_rule_dropped_total",
    "dt_rule_dropped_bytes_total",
    "dt_rule_redacted_total",
];

/// Every value of `stats` is in `p`, and nothing else is.
fn check_all(p: &Parsed, stats: &Stats) {
    let mut expected_series = 0;
    for r in &stats.rules {
        let labels = [
            ("rule", r.name.as_str()),
            ("action", r.action.as_str()),
            ("hook", r.hook.as_str()),
            ("active", if r.active { "true" } else { "false" }),
        ];
        let want = [r.matched, r.kept, r.dropped, r.dropped_bytes, r.redacted];
        for (name, want) in RULE_COUNTERS.iter().zip(want) {
            assert_eq!(p.get(name, &labels), Some(want), "{name} of {:?}", r.name);
            expected_series += 1;
        }
    }
    let t = &stats.totals;
    for (name, want) in [
        ("dt_connections_total", t.connections),
        ("dt_requests_total", t.requests),
        ("dt_log_requests_total", t.log_requests),
        ("dt_records_total", t.records),
        ("dt_records_dropped_total", t.records_dropped),
        ("dt_bytes_in_total", t.bytes_in),
        ("dt_bytes_out_total", t.bytes_out),
        ("dt_edit_failures_total", t.edit_failures),
        ("dt_untracked_bytes_total", t.untracked_bytes),
        ("dt_generation", stats.generation),
        ("dt_enabled", stats.enabled as u64),
        ("dt_requests_in_flight", t.in_flight),
        ("dt_requests_in_flight_longest_ms", t.in_flight_longest_ms),
        ("dt_rules_refused", stats.rules_error.is_some() as u64),
        ("dt_released_total", t.released),
        ("dt_uprobe_attached", stats.uprobes.attached),
        ("dt_uprobe_detaching", stats.uprobes.detaching),
        ("dt_uprobe_calls_total", stats.uprobes.calls),
        ("dt_uprobe_nested_total", stats.uprobes.nested),
        ("dt_uprobe_unreadable_total", stats.uprobes.unreadable),
        ("dt_uprobe_truncated_total", stats.uprobes.truncated),
        (
            "dt_uprobe_pages_faulted_in_total",
            stats.uprobes.pages_faulted_in,
        ),
        ("dt_uprobe_preempted_total", stats.uprobes.preempted),
        ("dt_uprobe_captured_total", stats.uprobes.captured),
        ("dt_uprobe_capture_lost_total", stats.uprobes.capture_lost),
        (
            "dt_uprobe_capture_throttled_total",
            stats.uprobes.capture_throttled,
        ),
        ("dt_uprobe_exported_total", stats.uprobes.exported),
        ("dt_uprobe_export_failed_total", stats.uprobes.export_failed),
    ] {
        assert_eq!(p.get(name, &[]), Some(want), "{name}");
        expected_series += 1;
    }
    for (reason, want) in &t.passthrough {
        assert_eq!(
            p.get("dt_passthrough_total", &[("reason", reason)]),
            Some(*want),
            "passthrough {reason}"
        );
        expected_series += 1;
    }
    for r in stats.rules.iter().filter(|r| r.fired.is_some()) {
        let active = r.active.to_string();
        let labels = [
            ("rule", r.name.as_str()),
            ("action", r.action.as_str()),
            ("hook", r.hook.as_str()),
            ("active", active.as_str()),
        ];
        assert_eq!(p.get("dt_rule_fired_total", &labels), r.fired);
        expected_series += 1;
    }
    for r in &stats.rules {
        let active = r.active.to_string();
        for (group, want) in r.groups.iter().flatten() {
            let labels = [
                ("rule", r.name.as_str()),
                ("action", r.action.as_str()),
                ("hook", r.hook.as_str()),
                ("active", active.as_str()),
                ("group", group.as_str()),
            ];
            assert_eq!(
                p.get("dt_rule_group_matched_total", &labels),
                Some(*want),
                "group {group} of {}",
                r.name
            );
            expected_series += 1;
        }
    }
    for r in &stats.recorders {
        let l = [("recorder", r.name.as_str())];
        for (name, want) in [
            ("dt_recorder_records", r.records),
            ("dt_recorder_bytes", r.bytes),
            ("dt_recorder_overwritten_total", r.overwritten),
            ("dt_recorder_too_long_total", r.too_long),
            ("dt_recorder_flushes_total", r.flushes),
            ("dt_recorder_flushed_records_total", r.flushed_records),
            ("dt_recorder_flush_failures_total", r.flush_failures),
            ("dt_recorder_lost_total", r.lost),
            ("dt_recorder_recorded_total", r.recorded),
        ] {
            assert_eq!(p.get(name, &l), Some(want), "{name}");
            expected_series += 1;
        }
    }
    for st in &stats.states {
        assert_eq!(
            p.get("dt_state_on", &[("state", st.name.as_str())]),
            Some(st.on as u64)
        );
        expected_series += 1;
    }
    assert_eq!(p.samples.len(), expected_series, "no other series");
    for ((name, _), _) in p.samples.iter() {
        let (kind, help) = &p.families[name];
        assert!(!help.is_empty());
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
    }
}

#[test]
fn renders_every_value_and_parses_back() {
    let stats = testdata::stats();
    let text = render_prometheus(&stats);
    let p = parse(&text);
    check_all(&p, &stats);
    assert_eq!(p.order.len(), 51, "{:?}", p.order);
    assert!(
        text.contains("dt_recorder_records{recorder=\"checkout-debug\"} 12\n"),
        "{text}"
    );
    assert!(
        text.contains("dt_state_on{state=\"incident\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "dt_rule_fired_total{rule=\"on-error\",action=\"trigger\",hook=\"otlp\",active=\"true\"} 3\n"
        ),
        "{text}"
    );
    assert_eq!(p.families["dt_generation"].0, "gauge");
    assert_eq!(p.families["dt_enabled"].0, "gauge");
    assert_eq!(p.families["dt_requests_in_flight"].0, "gauge");
    assert_eq!(p.families["dt_passthrough_total"].0, "counter");
}

#[test]
fn escapes_label_values_exactly() {
    let stats = testdata::stats();
    let text = render_prometheus(&stats);
    assert!(
        text.contains(
            r#"dt_rule_matched_total{rule="quote \" back \\ nl",action="sample",hook="otlp",active="true"} 21"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"dt_rule_dropped_total{rule="line\nbreak",action="count",hook="otlp",active="false"} 33"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"rule="ünïcødé ✓""#));
    assert!(text.contains(&format!(
        r#"dt_rule_redacted_total{{rule="big",action="count",hook="otlp",active="true"}} {}"#,
        u64::MAX - 5
    )));
    assert!(text.contains("# TYPE dt_rule_matched_total counter\n"));
    assert!(text.contains("dt_enabled 1\n"));
    assert!(text.contains("dt_passthrough_total{reason=\"not_logs\"} 1003\n"));
    // Every line is a comment or a sample: no raw newline escaped into a line.
    for line in text.lines() {
        assert!(
            line.starts_with("# ") || line.starts_with("dt_"),
            "{line:?}"
        );
    }
    assert_eq!(escape_label_value("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
    assert_eq!(escape_help("a\\b\nc"), r"a\\b\nc");
}

/// `dt_disabled_info`'s `reason` is a fixed token: the same series for every trip of the
/// ceiling, whatever its figures (they stay in `stats`' `disabled_reason`).
#[test]
fn why_disabled_is_a_fixed_token() {
    let mut stats = testdata::stats();
    stats.enabled = false;
    let mut series = BTreeSet::new();
    for (why, token) in [
        (
            "ceiling: dt's kernel programs took 0.1683% of all 2 CPUs over the last 999 ms \
             (3365 µs of CPU time in 2226 runs), over the ceiling of 0.0001%; every request \
             passes untouched until `dt-agent enable`",
            "ceiling",
        ),
        (
            "ceiling: dt's kernel programs took 0.2% of all 2 CPUs over the last 1001 ms \
             (4001 µs of CPU time in 2500 runs), over the ceiling of 0.0001%; every request \
             passes untouched until `dt-agent enable`",
            "ceiling",
        ),
        (
            "the rip cord is pulled (dt-agent disable): every request passes untouched",
            "disable",
        ),
        (
            "the agent is stopping (it waits for held requests, then detaches): every request \
             passes untouched",
            "stopping",
        ),
    ] {
        stats.disabled_reason = Some(why.into());
        stats.disabled_cause = Some(token.into());
        let text = render_prometheus(&stats);
        let line = format!("dt_disabled_info{{reason=\"{token}\"}} 1\n");
        assert!(text.contains(&line), "{line} not in\n{text}");
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                !sample.contains("CPU time") && !sample.contains("rip cord"),
                "{sample}"
            );
        }
        let p = parse(&text);
        let info: Vec<_> = p
            .samples
            .keys()
            .filter(|(name, _)| name == "dt_disabled_info")
            .cloned()
            .collect();
        assert_eq!(info.len(), 1, "{info:?}");
        series.insert(info[0].clone());
    }
    // Two trips of the ceiling, one series.
    assert_eq!(series.len(), 3, "{series:?}");
}

#[test]
fn empty_stats_still_list_every_family() {
    let stats = Stats::default();
    let text = render_prometheus(&stats);
    let p = parse(&text);
    // Every family is listed, with or without samples (those of rules, triggers, groups,
    // recorders, states, why disabled and the cost ceiling have none here).
    assert_eq!(p.order.len(), 51);
    check_all(&p, &stats);
    assert!(text.contains("dt_enabled 0\n"));
    let families: BTreeSet<_> = p.order.iter().cloned().collect();
    for name in RULE_COUNTERS {
        assert!(families.contains(name));
    }
}

#[test]
fn bind_refuses_non_loopback() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for addr in [
            "0.0.0.0:0",
            "10.1.2.3:9090",
            "[::]:0",
            "[fe80::1]:9090",
            "192.168.0.1:0",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let err = bind_metrics(addr).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "metrics address must be a loopback address (127.0.0.0/8 or ::1), not {addr}"
                )
            );
        }
        let l = bind_metrics("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
        // Other addresses of 127.0.0.0/8 are loopback too (Linux answers on all of them).
        bind_metrics("127.0.0.2:0".parse().unwrap()).unwrap();
    });
    // Outside a runtime: an error, not a panic.
    let err = bind_metrics("127.0.0.1:0".parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// One request on a raw connection; returns (status, headers, body) and leaves the
/// connection open (Content-Length framing).
fn exchange(s: &mut std::net::TcpStream, request: &str) -> (u16, Vec<(String, String)>, String) {
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let body_len = if request.starts_with("HEAD ") { 0 } else { len };
    while buf.len() < head_end + body_len {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + body_len].to_vec()).unwrap();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn serves_metrics_with_keepalive_and_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stats = testdata::stats();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let source: StatsSource = {
        let stats = stats.clone();
        let fail = fail.clone();
        Arc::new(move || {
            if fail.load(std::sync::atomic::Ordering::SeqCst) {
                anyhow::bail!("the maps are gone")
            }
            Ok(stats.clone())
        })
    };
    let addr = rt.block_on(async {
        let l = bind_metrics("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_prometheus(l, source));
        addr
    });
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    // Several requests on one connection.
    for _ in 0..3 {
        let (status, headers, body) = exchange(&mut s, get);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
        assert_eq!(body, render_prometheus(&stats));
        check_all(&parse(&body), &stats);
    }
    let (status, headers, body) = exchange(&mut s, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(header(&headers, "content-type"), Some(CONTENT_TYPE));
    let (status, _, _) = exchange(&mut s, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let (status, _, _) = exchange(&mut s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
    let (status, _, _) = exchange(&mut s, "GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
    let (status, headers, _) = exchange(
        &mut s,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    let (status, _, _) = exchange(&mut s, "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 405);
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, _, body) = exchange(&mut s, get);
    assert_eq!(status, 500);
    assert!(body.contains("the maps are gone"), "{body}");
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, _, _) = exchange(&mut s, get);
    assert_eq!(status, 200, "the connection survives a failed read");
    drop(s);
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn a_panicking_source_answers_500() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let source: StatsSource = Arc::new(|| panic!("poisoned"));
    let addr = rt.block_on(async {
        let l = bind_metrics("[::1]:0".parse().unwrap())
            .or_else(|_| bind_metrics("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_prometheus(l, source));
        addr
    });
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (status, _, body) = exchange(&mut s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 500);
        assert!(body.contains("panicked"), "{body}");
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}
