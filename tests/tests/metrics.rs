//! Metrics out: an in-process agent filters real traffic, then its counters are scraped from
//! `serve_prometheus` over HTTP and pushed with `push_once` to an OTLP/HTTP metrics receiver
//! (hyper + prost, written here), and every value is compared with `Agent::stats()` and with
//! the independent rule model. The exposition and the OTLP request are parsed here, without
//! dt's code.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dt_agent::metrics::{CounterStarts, StatsSource, bind_metrics, push_once, serve_prometheus};
use dt_agent::{Agent, Stats};
use dt_tests::agent_process::AgentProcess;
use dt_tests::otlp::{encode, sent_records};
use dt_tests::{
    Expected, HttpRequestBuilder, LogsRequestBuilder, RawClient, Rec, Receiver, RuleSpec, Split,
    TempRules, WAIT, assert_expected, evaluate, kernel_or_skip, start_agent, stats_of,
};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

/// Every value of `dt_disabled_info`'s `reason` label, as the README lists them.
const DISABLED_REASONS: [&str; 5] = [
    "ceiling",
    "disable",
    "stopping",
    "uninstall_cut_short",
    "unknown",
];

/// A count rule in front (its name needs escaping in the exposition), drops behind it.
fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count(r#"count "errors" \ all"#).severity(">=ERROR", 17..=24),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
        RuleSpec::count("count-kept"),
    ]
}

fn logs(
    service: &str,
    n: usize,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    let mut b = LogsRequestBuilder::new().resource(service).scope("app");
    for i in 0..n {
        let (sev, body) = match i % 5 {
            0 => (5, format!("debug {i}")),
            1 => (9, format!("healthcheck {i}")),
            2 => (17, format!("error {i}")),
            _ => (9, format!("info {i}")),
        };
        b = b.record(Rec::new(sev, &body));
    }
    b.build()
}

/// An agent hooking a fresh receiver, and the traffic sent through it.
struct Running {
    receiver: Receiver,
    _rules: TempRules,
    agent: Arc<Mutex<Agent>>,
    expected: Expected,
    requests: usize,
}

impl Running {
    fn start() -> Running {
        let receiver = Receiver::start_v4();
        let dir = TempRules::from_rules(&rules());
        let agent = start_agent(&dir, &[receiver.port()]);
        let mut r = Running {
            receiver,
            _rules: dir,
            agent: Arc::new(Mutex::new(agent)),
            expected: Expected::default(),
            requests: 0,
        };
        r.send_round("first", 3, 40);
        r
    }

    /// `conns` connections, each with two logs requests of `n` records, and one gzipped request
    /// (passthrough `compressed`) on the last; waits until the receiver has them all.
    fn send_round(&mut self, tag: &str, conns: usize, n: usize) {
        for c in 0..conns {
            let mut client = RawClient::connect(self.receiver.addr());
            for k in 0..2 {
                let req = logs(&format!("{tag}-{c}-{k}"), n + k);
                self.expected
                    .merge(&evaluate(&rules(), &sent_records(&req)));
                let http = HttpRequestBuilder::logs(encode(&req)).build();
                let resp = client.roundtrip(&http, &Split::Whole);
                assert_eq!(resp.status, 200);
                self.requests += 1;
            }
            if c + 1 == conns {
                let http = HttpRequestBuilder::logs(encode(&logs("gz", 10)))
                    .gzip()
                    .build();
                let resp = client.roundtrip(&http, &Split::Whole);
                assert_eq!(resp.status, 200);
                self.requests += 1;
            }
            client.finish();
        }
        self.receiver.wait_for(self.requests, WAIT);
    }

    fn stats(&self) -> Stats {
        stats_of(&self.agent.lock().unwrap())
    }

    fn source(&self) -> StatsSource {
        let agent = self.agent.clone();
        Arc::new(move || agent.lock().unwrap().stats())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// The exposition, parsed here.

/// `(name, sorted labels) → value`, plus each family's TYPE.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    helps: BTreeMap<String, String>,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.samples.get(&(name.to_string(), l)).copied()
    }
}

/// Parses the Prometheus text format 0.0.4 (no timestamps): comments `# HELP`/`# TYPE`,
/// samples `name{label="value",...} value`, label values with `\\`, `\"`, `\n` escapes.
fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                e.types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP line");
            e.helps.insert(name.into(), help.into());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let bytes: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut name = String::new();
        while i < bytes.len() && bytes[i] != '{' && bytes[i] != ' ' {
            name.push(bytes[i]);
            i += 1;
        }
        let mut labels = Vec::new();
        if i < bytes.len() && bytes[i] == '{' {
            i += 1;
            loop {
                if bytes[i] == '}' {
                    i += 1;
                    break;
                }
                let mut k = String::new();
                while bytes[i] != '=' {
                    k.push(bytes[i]);
                    i += 1;
                }
                i += 1;
                assert_eq!(bytes[i], '"', "{line:?}");
                i += 1;
                let mut v = String::new();
                loop {
                    match bytes[i] {
                        '\\' => {
                            i += 1;
                            v.push(match bytes[i] {
                                'n' => '\n',
                                '\\' => '\\',
                                '"' => '"',
                                c => panic!("bad escape \\{c} in {line:?}"),
                            });
                        }
                        '"' => break,
                        c => v.push(c),
                    }
                    i += 1;
                }
                i += 1;
                labels.push((k, v));
                if bytes[i] == ',' {
                    i += 1;
                }
            }
        }
        assert_eq!(bytes[i], ' ', "{line:?}");
        let value: String = bytes[i + 1..].iter().collect();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value in {line:?}: {e}"));
        let family = name.clone();
        assert!(
            e.types.contains_key(&family),
            "sample {name} before its TYPE line"
        );
        labels.sort();
        assert!(
            e.samples.insert((name, labels), value).is_none(),
            "duplicate series in {line:?}"
        );
    }
    e
}

fn rule_labels(r: &dt_agent::stats::RuleStats) -> [(&str, &str); 4] {
    [
        ("rule", r.name.as_str()),
        ("action", r.action.as_str()),
        ("hook", r.hook.as_str()),
        ("active", if r.active { "true" } else { "false" }),
    ]
}

/// Every counter of `stats` reads the same in `e`, and `e` has nothing else.
fn assert_exposition_matches(e: &Exposition, stats: &Stats) {
    let mut n = 0;
    for r in &stats.rules {
        let l = rule_labels(r);
        for (name, want) in [
            ("dt_rule_matched_total", r.matched),
            ("dt_rule_kept_total", r.kept),
            ("dt_rule_dropped_total", r.dropped),
            ("dt_rule_dropped_bytes_total", r.dropped_bytes),
            ("dt_rule_redacted_total", r.redacted),
        ] {
            assert_eq!(e.get(name, &l), Some(want as f64), "{name} of {:?}", r.name);
            n += 1;
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
        ("dt_uprobe_preempted_total", stats.uprobes.preempted),
        ("dt_uprobe_calls_total", stats.uprobes.calls),
        ("dt_uprobe_nested_total", stats.uprobes.nested),
        ("dt_uprobe_unreadable_total", stats.uprobes.unreadable),
        (
            "dt_uprobe_pages_faulted_in_total",
            stats.uprobes.pages_faulted_in,
        ),
        ("dt_uprobe_truncated_total", stats.uprobes.truncated),
        ("dt_uprobe_captured_total", stats.uprobes.captured),
        ("dt_uprobe_capture_lost_total", stats.uprobes.capture_lost),
        (
            "dt_uprobe_capture_throttled_total",
            stats.uprobes.capture_throttled,
        ),
        ("dt_uprobe_exported_total", stats.uprobes.exported),
        ("dt_uprobe_export_failed_total", stats.uprobes.export_failed),
    ] {
        assert_eq!(e.get(name, &[]), Some(want as f64), "{name}");
        n += 1;
    }
    // Why it is disabled, while it is: one series, labelled with a fixed token (the words and
    // figures of disabled_reason are no label); what the cost ceiling measured, with one.
    let info: Vec<_> = e
        .samples
        .iter()
        .filter(|((name, _), _)| name == "dt_disabled_info")
        .collect();
    if stats.disabled_reason.is_some() {
        assert_eq!(info.len(), 1, "{info:?}");
        let ((_, labels), value) = info[0];
        assert_eq!(*value, 1.0);
        assert!(
            labels.len() == 1
                && labels[0].0 == "reason"
                && DISABLED_REASONS.contains(&labels[0].1.as_str()),
            "{labels:?}"
        );
        n += 1;
    } else {
        assert!(info.is_empty(), "{info:?}");
    }
    if let Some(c) = &stats.cost {
        for (name, want) in [
            ("dt_kernel_cpu_ppm", c.cpu_ppm),
            ("dt_kernel_cpu_ceiling_ppm", c.cpu_ceiling_ppm),
            ("dt_ceiling_exceeded_total", c.exceeded),
            ("dt_maps_bytes", c.map_bytes),
        ] {
            assert_eq!(e.get(name, &[]), Some(want as f64), "{name}");
            n += 1;
        }
    }
    assert!(!t.passthrough.is_empty());
    for (reason, want) in &t.passthrough {
        assert_eq!(
            e.get("dt_passthrough_total", &[("reason", reason)]),
            Some(*want as f64),
            "passthrough {reason}"
        );
        n += 1;
    }
    assert_eq!(
        e.samples.len(),
        n,
        "no other series: {:?}",
        e.samples.keys()
    );
    for (name, kind) in &e.types {
        let want = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(kind, want, "TYPE of {name}");
        assert!(
            e.helps.get(name).is_some_and(|h| !h.is_empty()),
            "HELP of {name}"
        );
    }
}

/// The traffic's effect, from the model: the counters are not just equal to `stats()`, they are
/// right.
fn assert_model(stats: &Stats, run: &Running) {
    assert_expected(stats, &run.expected);
    assert_eq!(stats.totals.requests, run.requests as u64);
    assert!(stats.totals.records_dropped > 0 && stats.totals.bytes_in > stats.totals.bytes_out);
    assert!(stats.totals.passthrough["compressed"] >= 1);
    let counted = stats
        .rule(r#"count "errors" \ all"#)
        .expect("the count rule");
    assert!(counted.matched > 0);
}

fn scrape(client: &mut RawClient, addr: SocketAddr) -> (u16, Option<String>, String) {
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    client.write_chunks(&[req.as_bytes()], Duration::ZERO);
    let resp = client.read_response();
    (
        resp.status,
        resp.header("content-type").map(str::to_string),
        String::from_utf8(resp.body).expect("utf-8 exposition"),
    )
}

#[test]
fn metrics_prometheus_scrape_matches_agent_stats() {
    if !kernel_or_skip("metrics_prometheus_scrape_matches_agent_stats") {
        return;
    }
    let mut run = Running::start();
    let rt = runtime();
    let addr = rt.block_on(async {
        let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).expect("bind_metrics");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_prometheus(listener, run.source()));
        addr
    });

    // Two scrapes on one keep-alive connection, around nothing: the same values as stats().
    let mut client = RawClient::connect(addr);
    for _ in 0..2 {
        let (status, ct, body) = scrape(&mut client, addr);
        assert_eq!(status, 200, "{body}");
        let ct = ct.expect("content-type");
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let stats = run.stats();
        assert_model(&stats, &run);
        assert_exposition_matches(&parse_exposition(&body), &stats);
    }

    // More traffic: the next scrape on the same connection follows.
    let before = run.stats();
    run.send_round("second", 2, 25);
    let (status, _, body) = scrape(&mut client, addr);
    assert_eq!(status, 200);
    let stats = run.stats();
    assert_model(&stats, &run);
    assert!(stats.totals.records > before.totals.records);
    assert_exposition_matches(&parse_exposition(&body), &stats);

    // Disabled: dt_enabled reads 0, and dt_disabled_info says by hand, in a word.
    run.agent.lock().unwrap().set_enabled(false).unwrap();
    let (_, _, body) = scrape(&mut client, addr);
    let e = parse_exposition(&body);
    assert_eq!(e.get("dt_enabled", &[]), Some(0.0));
    assert_eq!(
        e.get("dt_disabled_info", &[("reason", "disable")]),
        Some(1.0),
        "{body}"
    );
    assert_exposition_matches(&e, &run.stats());
    run.agent.lock().unwrap().set_enabled(true).unwrap();
    let (_, _, body) = scrape(&mut client, addr);
    let e = parse_exposition(&body);
    assert_eq!(e.get("dt_enabled", &[]), Some(1.0));
    assert_exposition_matches(&e, &run.stats());

    // Other paths and methods.
    client.write_chunks(&[b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"], Duration::ZERO);
    assert_eq!(client.read_response().status, 404);
    client.write_chunks(
        &[b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"],
        Duration::ZERO,
    );
    assert_eq!(client.read_response().status, 405);
    client.finish();

    // The metrics connection itself is not hooked: the hooked-connection count did not move.
    assert_eq!(run.stats().totals.connections, stats.totals.connections);
    rt.shutdown_timeout(Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------------
// An OTLP/HTTP metrics receiver: hyper + prost.

#[derive(Clone, Debug)]
struct Pushed {
    path: String,
    content_type: String,
    request: Result<ExportMetricsServiceRequest, String>,
}

async fn start_metrics_receiver() -> (SocketAddr, Arc<Mutex<Vec<Pushed>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = match req.into_body().collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(e) => {
                                    g.lock().unwrap().push(Pushed {
                                        path,
                                        content_type,
                                        request: Err(e.to_string()),
                                    });
                                    return Ok::<_, Infallible>(
                                        hyper::Response::builder()
                                            .status(400)
                                            .body(Full::new(Bytes::new()))
                                            .unwrap(),
                                    );
                                }
                            };
                            let request = ExportMetricsServiceRequest::decode(body.as_ref())
                                .map_err(|e| e.to_string());
                            let status = if request.is_ok() { 200 } else { 400 };
                            g.lock().unwrap().push(Pushed {
                                path,
                                content_type,
                                request,
                            });
                            let answer = ExportMetricsServiceResponse::default().encode_to_vec();
                            Ok(hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::from(answer)))
                                .unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn attr_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// (metric, attributes) → (value, is a monotonic cumulative Sum, start, time).
type Points = BTreeMap<(String, BTreeMap<String, String>), (i64, bool, u64, u64)>;

fn otlp_points(req: &ExportMetricsServiceRequest) -> Points {
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    let res = attr_map(&rm.resource.as_ref().expect("resource").attributes);
    assert_eq!(
        res.get("service.name").map(String::as_str),
        Some("dt-agent")
    );
    assert!(
        res.get("host.name").is_some_and(|h| !h.is_empty()),
        "{res:?}"
    );
    // Which agent: a UUID, so that two hosts' series stay apart.
    assert!(
        res.get("service.instance.id").is_some_and(|id| is_uuid(id)),
        "{res:?}"
    );
    assert_eq!(rm.scope_metrics.len(), 1);
    let sm = &rm.scope_metrics[0];
    assert_eq!(sm.scope.as_ref().expect("scope").name, "dt");
    let mut out = Points::new();
    for m in &sm.metrics {
        let (dps, is_sum) = match m.data.as_ref().expect("data") {
            metric::Data::Sum(s) => {
                assert!(s.is_monotonic, "{} is monotonic", m.name);
                assert_eq!(s.aggregation_temporality, 2, "{} is cumulative", m.name);
                (&s.data_points, true)
            }
            metric::Data::Gauge(g) => (&g.data_points, false),
            other => panic!("{}: unexpected {other:?}", m.name),
        };
        for dp in dps {
            let v = match dp.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                other => panic!("{}: {other:?}", m.name),
            };
            let key = (m.name.clone(), attr_map(&dp.attributes));
            assert!(
                out.insert(key, (v, is_sum, dp.start_time_unix_nano, dp.time_unix_nano))
                    .is_none(),
                "{} twice",
                m.name
            );
        }
    }
    out
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

/// The `service.instance.id` of the only resource of `req`.
fn instance_id(req: &ExportMetricsServiceRequest) -> String {
    let res = attr_map(
        &req.resource_metrics[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes,
    );
    res["service.instance.id"].clone()
}

/// What an agent without OpAMP says its `service.instance.id` is on this host, by systemd's own
/// derivation from the machine id (`None` without `systemd-id128`).
fn host_instance_id() -> Option<String> {
    let o = std::process::Command::new("systemd-id128")
        .args([
            "machine-id",
            "--app-specific=fbb35291-fd53-4fe9-a1b2-b0c1957d121f",
            "-u",
        ])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn assert_points_match(p: &Points, stats: &Stats, start: CounterStarts, window: (u64, u64)) {
    let get = |name: &str, labels: &[(&str, &str)]| {
        let key = (
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        let (v, is_sum, s, t) = *p.get(&key).unwrap_or_else(|| panic!("no point {key:?}"));
        assert!(
            t >= window.0 && t <= window.1,
            "{name}: time {t} outside {window:?}"
        );
        if is_sum {
            // One agent, no pins adopted: every counter from its start.
            assert_eq!(s, start.kernel, "{name}: start time is the agent's start");
        }
        (v as u64, is_sum)
    };
    let mut n = 0;
    for r in &stats.rules {
        let l = rule_labels(r);
        for (name, want) in [
            ("dt.rule.matched", r.matched),
            ("dt.rule.kept", r.kept),
            ("dt.rule.dropped", r.dropped),
            ("dt.rule.dropped_bytes", r.dropped_bytes),
            ("dt.rule.redacted", r.redacted),
        ] {
            assert_eq!(get(name, &l), (want, true), "{name} of {:?}", r.name);
            n += 1;
        }
    }
    let t = &stats.totals;
    for (name, want, sum) in [
        ("dt.connections", t.connections, true),
        ("dt.requests", t.requests, true),
        ("dt.log_requests", t.log_requests, true),
        ("dt.records", t.records, true),
        ("dt.records.dropped", t.records_dropped, true),
        ("dt.bytes.in", t.bytes_in, true),
        ("dt.bytes.out", t.bytes_out, true),
        ("dt.edit_failures", t.edit_failures, true),
        ("dt.untracked_bytes", t.untracked_bytes, true),
        ("dt.generation", stats.generation, false),
        ("dt.enabled", stats.enabled as u64, false),
        ("dt.requests.in_flight", t.in_flight, false),
        (
            "dt.requests.in_flight.longest_ms",
            t.in_flight_longest_ms,
            false,
        ),
        (
            "dt.rules.refused",
            stats.rules_error.is_some() as u64,
            false,
        ),
        ("dt.released", t.released, true),
        ("dt.uprobe.attached", stats.uprobes.attached, false),
        ("dt.uprobe.detaching", stats.uprobes.detaching, false),
        ("dt.uprobe.preempted", stats.uprobes.preempted, true),
        ("dt.uprobe.calls", stats.uprobes.calls, true),
        ("dt.uprobe.nested", stats.uprobes.nested, true),
        ("dt.uprobe.unreadable", stats.uprobes.unreadable, true),
        (
            "dt.uprobe.pages_faulted_in",
            stats.uprobes.pages_faulted_in,
            true,
        ),
        ("dt.uprobe.truncated", stats.uprobes.truncated, true),
        ("dt.uprobe.captured", stats.uprobes.captured, true),
        ("dt.uprobe.capture_lost", stats.uprobes.capture_lost, true),
        (
            "dt.uprobe.capture_throttled",
            stats.uprobes.capture_throttled,
            true,
        ),
        ("dt.uprobe.exported", stats.uprobes.exported, true),
        ("dt.uprobe.export_failed", stats.uprobes.export_failed, true),
    ] {
        assert_eq!(get(name, &[]), (want, sum), "{name}");
        n += 1;
    }
    for (reason, want) in &t.passthrough {
        assert_eq!(
            get("dt.passthrough", &[("reason", reason)]),
            (*want, true),
            "passthrough {reason}"
        );
        n += 1;
    }
    // Why it is disabled, while it is: one point, its `reason` a fixed token.
    let info: Vec<_> = p
        .iter()
        .filter(|((name, _), _)| name == "dt.disabled.info")
        .collect();
    if stats.disabled_reason.is_some() {
        assert_eq!(info.len(), 1, "{info:?}");
        let ((_, attributes), (value, is_sum, _, _)) = info[0];
        assert_eq!((*value, *is_sum), (1, false));
        assert!(
            attributes.len() == 1
                && attributes
                    .get("reason")
                    .is_some_and(|r| DISABLED_REASONS.contains(&r.as_str())),
            "{attributes:?}"
        );
        n += 1;
    } else {
        assert!(info.is_empty(), "{info:?}");
    }
    assert_eq!(p.len(), n, "no other points: {:?}", p.keys());
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn metrics_otlp_push_matches_agent_stats() {
    if !kernel_or_skip("metrics_otlp_push_matches_agent_stats") {
        return;
    }
    let start = CounterStarts::at(unix_nanos());
    let mut run = Running::start();
    let rt = runtime();
    let (addr, got) = rt.block_on(start_metrics_receiver());
    let endpoint: hyper::Uri = format!("http://{addr}/v1/metrics").parse().unwrap();
    let source = run.source();

    for round in 0..2 {
        if round == 1 {
            run.send_round("more", 2, 30);
        }
        let stats = run.stats();
        assert_model(&stats, &run);
        let t0 = unix_nanos();
        rt.block_on(push_once(&endpoint, start, &source))
            .unwrap_or_else(|e| panic!("push_once: {e:#}"));
        let t1 = unix_nanos();
        let pushed = got.lock().unwrap().clone();
        assert_eq!(pushed.len(), round + 1);
        let last = pushed.last().unwrap();
        assert_eq!(last.path, "/v1/metrics");
        assert_eq!(last.content_type, "application/x-protobuf");
        let req = last.request.as_ref().expect("the push decodes");
        // Nothing moves between stats() and the push: no traffic is in flight.
        assert_points_match(&otlp_points(req), &stats, start, (t0, t1));
        assert_eq!(run.stats(), stats);
        // Without OpAMP, the host's id, derived from its machine id as systemd derives one.
        if let Some(want) = host_instance_id() {
            assert_eq!(instance_id(req), want);
        }
    }

    // Disabled by hand: dt.disabled.info says so, in a word.
    run.agent.lock().unwrap().set_enabled(false).unwrap();
    let stats = run.stats();
    let t0 = unix_nanos();
    rt.block_on(push_once(&endpoint, start, &source))
        .unwrap_or_else(|e| panic!("push_once: {e:#}"));
    let t1 = unix_nanos();
    let req = got.lock().unwrap().last().unwrap().request.clone();
    let p = otlp_points(req.as_ref().expect("the push decodes"));
    assert_points_match(&p, &stats, start, (t0, t1));
    let disabled = BTreeMap::from([("reason".to_string(), "disable".to_string())]);
    assert_eq!(
        p.get(&("dt.disabled.info".to_string(), disabled))
            .map(|v| v.0),
        Some(1),
        "{:?}",
        p.keys()
    );
    run.agent.lock().unwrap().set_enabled(true).unwrap();

    // A receiver that is gone: an error, not a panic or a hang.
    drop(rt);
    let rt = runtime();
    let e = rt
        .block_on(push_once(&endpoint, start, &source))
        .expect_err("nobody listens any more");
    assert!(format!("{e:#}").contains("connect"), "{e:#}");
}

#[test]
fn metrics_refuses_non_loopback_addresses() {
    // No kernel needed.
    let rt = runtime();
    rt.block_on(async {
        for addr in [
            "0.0.0.0:9464",
            "[::]:9464",
            "192.0.2.1:9464",
            "[2001:db8::1]:9464",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let e = bind_metrics(addr).expect_err("not loopback");
            assert_eq!(
                e.to_string(),
                format!(
                    "metrics address must be a loopback address (127.0.0.0/8 or ::1), not {addr}"
                )
            );
        }
        let l = bind_metrics("127.0.0.1:0".parse().unwrap()).expect("loopback v4");
        assert!(l.local_addr().unwrap().ip().is_loopback());
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let l = bind_metrics("[::1]:0".parse().unwrap()).expect("loopback v6");
            assert!(l.local_addr().unwrap().ip().is_loopback());
        }
    });
}

/// The start time of the OTLP push's counters: an agent's own start, or, when it adopts pinned
/// counters that an earlier agent began, when those pins were made (before that agent's first
/// push), so that a cumulative-to-delta conversion does not count the carried values again.
/// The agent's own counters (the ceiling's `exceeded` here), which a restart begins again at 0,
/// start at each agent's start, so that the conversion reads the restart as a reset.
#[test]
fn metrics_otlp_start_time_of_adopted_counters_is_when_they_began() {
    if !kernel_or_skip("metrics_otlp_start_time_of_adopted_counters_is_when_they_began") {
        return;
    }
    let rt = runtime();
    let (addr, got) = rt.block_on(start_metrics_receiver());
    let receiver = Receiver::start_v4();
    let dir = TempRules::from_rules(&rules());
    let mut agent = dt_tests::agent_process::AgentProcess::new(
        "otlp-start",
        dir.path(),
        &[receiver.port()],
        true,
    );
    // A ceiling no test traffic comes near, for its agent-side counter.
    agent.write_config(&format!(
        "otlp_endpoint = \"http://{addr}/v1/metrics\"\notlp_interval = \"200ms\"\n\
         [ceiling]\ncpu = \"90%\"\nwindow = \"1s\"\n"
    ));
    // The start times of `dt.records` and of `dt.ceiling.exceeded` in the first push after
    // `after` that has both (the ceiling's series come after its first window), in ns since
    // the epoch, and the push's `service.instance.id`.
    let records_start = |after: usize| -> (usize, (u64, u64), String) {
        let t0 = std::time::Instant::now();
        loop {
            let pushed = got.lock().unwrap().clone();
            for (i, push) in pushed.iter().enumerate().skip(after) {
                let req = push.request.as_ref().unwrap();
                let p = otlp_points(req);
                let start = |family: &str| {
                    let (_, is_sum, start, _) = p
                        .iter()
                        .find(|((name, _), _)| name == family)
                        .map(|(_, v)| *v)?;
                    assert!(is_sum, "{family} is a counter");
                    Some(start)
                };
                if let (Some(kernel), Some(own)) =
                    (start("dt.records"), start("dt.ceiling.exceeded"))
                {
                    return (i + 1, (kernel, own), instance_id(req));
                }
            }
            assert!(
                t0.elapsed() < WAIT,
                "no push with dt.records and dt.ceiling.exceeded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first_started = unix_nanos();
    agent.start();
    let (_, (first, first_own), first_instance) = records_start(0);
    assert!(first >= first_started, "{first} < {first_started}");
    assert!(
        (first_started..=first).contains(&first_own),
        "the agent's own counters start at its start ({first_own}), the pinned ones when it \
         made the pins ({first})"
    );
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(10));
    // Pushes from now on are the second agent's.
    let n = got.lock().unwrap().len();
    // Pinned: the counters stay; the next agent adopts them.
    let second_started = unix_nanos();
    agent.start();
    let (_, (second, second_own), second_instance) = records_start(n);
    assert_eq!(
        second, first,
        "the adopted counters' start is when the pins were made, as the first agent said (a \
         changed start time reads as a reset)"
    );
    assert!(
        second_own >= second_started,
        "the second agent's own counter starts at {second_own}, before that agent started \
         ({second_started}): its restart at 0 would read as a fall"
    );
    // A restart is the same instance (so the counters it carries on are the same series).
    assert_eq!(first_instance, second_instance);
    if let Some(want) = host_instance_id() {
        assert_eq!(first_instance, want);
    }
    let o = agent.verb("uninstall", &[]);
    assert!(
        o.status.success(),
        "{}",
        dt_tests::agent_process::output_text(&o)
    );
}

/// With `[opamp]`, the metrics' `service.instance.id` is the OpAMP instance uid (kept in
/// `<state_dir>/opamp/instance_uid`), so the OpAMP server and the metrics backend name the agent
/// alike; an OpAMP server that cannot be reached does not change it, and a restart keeps it.
#[test]
fn metrics_otlp_instance_id_is_the_opamp_instance_uid() {
    if !kernel_or_skip("metrics_otlp_instance_id_is_the_opamp_instance_uid") {
        return;
    }
    let rt = runtime();
    let (addr, got) = rt.block_on(start_metrics_receiver());
    // A port nobody listens on: the OpAMP client retries, and the agent goes on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = Receiver::start_v4();
    let dir = TempRules::from_rules(&rules());
    let mut agent = AgentProcess::new("otlp-opamp", dir.path(), &[receiver.port()], false);
    let state = agent.dir().join("state");
    agent.write_config(&format!(
        "otlp_endpoint = \"http://{addr}/v1/metrics\"\notlp_interval = \"200ms\"\n\
         state_dir = \"{}\"\n\n[opamp]\nendpoint = \"http://127.0.0.1:{closed}/v1/opamp\"\n",
        state.display()
    ));
    let pushed_instance = |agent: &AgentProcess, after: usize| -> (usize, String) {
        let t0 = std::time::Instant::now();
        loop {
            let pushed = got.lock().unwrap().clone();
            if pushed.len() > after {
                let req = pushed.last().unwrap().request.as_ref().unwrap().clone();
                otlp_points(&req);
                return (pushed.len(), instance_id(&req));
            }
            assert!(t0.elapsed() < WAIT, "no push:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for round in 0..2 {
        agent.start();
        let before = got.lock().unwrap().len();
        let (n, id) = pushed_instance(&agent, before);
        let kept = std::fs::read_to_string(state.join("opamp/instance_uid")).expect("the uid");
        assert_eq!(id, kept.trim(), "round {round}");
        // And it stays so, push after push.
        assert_eq!(pushed_instance(&agent, n).1, id);
        if let Some(host) = host_instance_id() {
            assert_ne!(id, host);
        }
        agent.signal(libc::SIGTERM);
        agent.wait_exit(Duration::from_secs(10));
    }
}
