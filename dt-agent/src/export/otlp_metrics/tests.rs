//! Tests of the otlp metrics output.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::export::families::testdata;
use crate::export::http::Target;
use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_util::rt::TokioIo;

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("{}: not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// (name, attributes) → (value, is_sum, start, time).
type Points = BTreeMap<(String, BTreeMap<String, String>), (i64, bool, u64, u64)>;

fn points(req: &ExportMetricsServiceRequest) -> Points {
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    let res = attrs(&rm.resource.as_ref().unwrap().attributes);
    assert_eq!(res["service.name"], "dt-agent");
    assert_eq!(res["host.name"], hostname());
    let instance = &res["service.instance.id"];
    assert!(crate::opamp::parse_uuid(instance).is_some(), "{instance}");
    assert_eq!(rm.scope_metrics.len(), 1);
    let sm = &rm.scope_metrics[0];
    assert_eq!(sm.scope.as_ref().unwrap().name, "dt");
    let mut out = Points::new();
    let mut names = std::collections::BTreeSet::new();
    for m in &sm.metrics {
        assert!(names.insert(m.name.clone()), "metric {} twice", m.name);
        let (dps, is_sum) = match m.data.as_ref().unwrap() {
            metric::Data::Sum(s) => {
                assert!(s.is_monotonic, "{}", m.name);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                (&s.data_points, true)
            }
            metric::Data::Gauge(g) => (&g.data_points, false),
            other => panic!("{}: {other:?}", m.name),
        };
        for dp in dps {
            let v = match dp.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                other => panic!("{other:?}"),
            };
            let key = (m.name.clone(), attrs(&dp.attributes));
            assert!(
                out.insert(key, (v, is_sum, dp.start_time_unix_nano, dp.time_unix_nano))
                    .is_none()
            );
        }
    }
    out
}

/// The counters the agent keeps itself, which start again at each agent's start.
const AGENT_COUNTERS: [&str; 6] = [
    "dt.uprobe.pages_faulted_in",
    "dt.uprobe.preempted",
    "dt.uprobe.capture_throttled",
    "dt.uprobe.exported",
    "dt.uprobe.export_failed",
    "dt.ceiling.exceeded",
];

fn check_points(p: &Points, stats: &Stats, starts: CounterStarts, now: Option<u64>) {
    let get = |name: &str, labels: &[(&str, &str)]| {
        let key = (
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        let (v, is_sum, s, t) = *p.get(&key).unwrap_or_else(|| panic!("no point {key:?}"));
        if let Some(now) = now {
            assert_eq!(t, now);
        }
        if is_sum {
            let start = if AGENT_COUNTERS.contains(&name) {
                starts.agent
            } else {
                starts.kernel
            };
            assert_eq!(s, start, "{name} start time");
        }
        (v, is_sum)
    };
    let mut n = 0;
    let sat = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for r in &stats.rules {
        let l = [
            ("rule", r.name.as_str()),
            ("action", r.action.as_str()),
            ("hook", r.hook.as_str()),
            ("active", if r.active { "true" } else { "false" }),
        ];
        for (name, want) in [
            ("dt.rule.matched", r.matched),
            ("dt.rule.kept", r.kept),
            ("dt.rule.dropped", r.dropped),
            ("dt.rule.dropped_bytes", r.dropped_bytes),
            ("dt.rule.redacted", r.redacted),
        ] {
            assert_eq!(get(name, &l), (sat(want), true), "{name} {:?}", r.name);
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
        ("dt.uprobe.calls", stats.uprobes.calls, true),
        ("dt.uprobe.nested", stats.uprobes.nested, true),
        ("dt.uprobe.unreadable", stats.uprobes.unreadable, true),
        ("dt.uprobe.truncated", stats.uprobes.truncated, true),
        (
            "dt.uprobe.pages_faulted_in",
            stats.uprobes.pages_faulted_in,
            true,
        ),
        ("dt.uprobe.preempted", stats.uprobes.preempted, true),
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
        assert_eq!(get(name, &[]), (sat(want), sum), "{name}");
        n += 1;
    }
    for (reason, want) in &t.passthrough {
        assert_eq!(
            get("dt.passthrough", &[("reason", reason)]),
            (sat(*want), true)
        );
        n += 1;
    }
    for r in stats.rules.iter().filter(|r| r.fired.is_some()) {
        let l = [
            ("rule", r.name.as_str()),
            ("action", r.action.as_str()),
            ("hook", r.hook.as_str()),
            ("active", if r.active { "true" } else { "false" }),
        ];
        assert_eq!(get("dt.rule.fired", &l), (sat(r.fired.unwrap()), true));
        n += 1;
    }
    for r in &stats.rules {
        for (group, want) in r.groups.iter().flatten() {
            let l = [
                ("rule", r.name.as_str()),
                ("action", r.action.as_str()),
                ("hook", r.hook.as_str()),
                ("active", if r.active { "true" } else { "false" }),
                ("group", group.as_str()),
            ];
            assert_eq!(get("dt.rule.group.matched", &l), (sat(*want), true));
            n += 1;
        }
    }
    for r in &stats.recorders {
        let l = [("recorder", r.name.as_str())];
        for (name, want, sum) in [
            ("dt.recorder.records", r.records, false),
            ("dt.recorder.bytes", r.bytes, false),
            ("dt.recorder.overwritten", r.overwritten, true),
            ("dt.recorder.too_long", r.too_long, true),
            ("dt.recorder.flushes", r.flushes, true),
            ("dt.recorder.flushed_records", r.flushed_records, true),
            ("dt.recorder.flush_failures", r.flush_failures, true),
            ("dt.recorder.lost", r.lost, true),
            ("dt.recorder.recorded", r.recorded, true),
        ] {
            assert_eq!(get(name, &l), (sat(want), sum), "{name}");
            n += 1;
        }
    }
    for st in &stats.states {
        assert_eq!(
            get("dt.state.on", &[("state", st.name.as_str())]),
            (st.on as i64, false)
        );
        n += 1;
    }
    if let Some(c) = &stats.cost {
        for (name, want, sum) in [
            ("dt.kernel.cpu.ppm", c.cpu_ppm, false),
            ("dt.kernel.cpu.ceiling.ppm", c.cpu_ceiling_ppm, false),
            ("dt.ceiling.exceeded", c.exceeded, true),
            ("dt.maps.bytes", c.map_bytes, false),
        ] {
            assert_eq!(get(name, &[]), (sat(want), sum), "{name}");
            n += 1;
        }
    }
    assert_eq!(p.len(), n, "no other points");
}

#[test]
fn request_holds_every_value() {
    let mut stats = testdata::stats();
    stats.cost = Some(crate::stats::CostStats {
        cpu_ppm: 31,
        cpu_ceiling_ppm: 32,
        exceeded: 33,
        map_bytes: 34,
        ..Default::default()
    });
    let starts = CounterStarts {
        kernel: 111,
        agent: 150,
    };
    let req = otlp_request(&stats, starts, 222);
    // Round trip through the wire encoding.
    let req = ExportMetricsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
    let p = points(&req);
    check_points(&p, &stats, starts, Some(222));
    // u64::MAX - 10 + 1 saturates.
    assert_eq!(
        p[&(
            "dt.rule.matched".to_string(),
            [
                ("rule", "big"),
                ("action", "count"),
                ("hook", "otlp"),
                ("active", "true")
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        )]
            .0,
        i64::MAX
    );
    let units: BTreeMap<_, _> = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.unit.as_str()))
        .collect();
    assert_eq!(units["dt.bytes.in"], "By");
    assert_eq!(units["dt.rule.dropped_bytes"], "By");
    assert_eq!(units["dt.records"], "{record}");
    assert_eq!(units.len(), 50);
    // Gauges carry no start time.
    for m in &req.resource_metrics[0].scope_metrics[0].metrics {
        if let Some(metric::Data::Gauge(g)) = &m.data {
            assert!(g.data_points.iter().all(|d| d.start_time_unix_nano == 0));
        }
    }
}

#[test]
fn empty_families_are_left_out() {
    let req = otlp_request(&Stats::default(), CounterStarts::at(1), 2);
    let names: Vec<_> = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("dt.rule.")));
    assert!(!names.contains(&"dt.passthrough"));
    assert_eq!(names.len(), 28);
    check_points(
        &points(&req),
        &Stats::default(),
        CounterStarts::at(1),
        Some(2),
    );
}

#[test]
fn endpoints() {
    let t = |s: &str| crate::export::http::target(&s.parse::<Uri>().unwrap(), WHAT);
    let target = |host: &str, port, authority: &str, path: &str, tls| Target {
        host: host.into(),
        port,
        authority: authority.into(),
        path: path.into(),
        tls,
    };
    assert_eq!(
        t("http://127.0.0.1:4318/v1/metrics").unwrap(),
        target("127.0.0.1", 4318, "127.0.0.1:4318", "/v1/metrics", false)
    );
    assert_eq!(
        t("http://[::1]:4318/v1/metrics?x=1").unwrap(),
        target("::1", 4318, "[::1]:4318", "/v1/metrics?x=1", false)
    );
    assert_eq!(
        t("http://collector").unwrap(),
        target("collector", 80, "collector", "/", false)
    );
    assert_eq!(
        t("https://collector/v1/metrics").unwrap(),
        target("collector", 443, "collector", "/v1/metrics", true)
    );
    assert!(t("/v1/metrics").is_err());
    assert!(t("ftp://x/y").is_err());
}

/// A tiny collector: answers each request with `status` and `answer`, keeps the bodies.
async fn collector(
    status: u16,
    answer: Vec<u8>,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(String, String, Vec<u8>)>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let g = g.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        let answer = answer.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let ct = req
                                .headers()
                                .get(CONTENT_TYPE)
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            g.lock().unwrap().push((path, ct, body));
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(answer)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut().insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_once_posts_protobuf() {
    let (addr, got) = collector(200, Vec::new()).await;
    let stats = testdata::stats();
    let s = stats.clone();
    let source: StatsSource = Arc::new(move || Ok(s.clone()));
    let endpoint: Uri = format!("http://{addr}/v1/metrics").parse().unwrap();
    let before = unix_nanos_now();
    push_once(&endpoint, CounterStarts::at(5), &source)
        .await
        .unwrap();
    push_once(&endpoint, CounterStarts::at(5), &source)
        .await
        .unwrap();
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let (path, ct, body) = &got[0];
    assert_eq!(path, "/v1/metrics");
    assert_eq!(ct, "application/x-protobuf");
    let req = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
    let p = points(&req);
    check_points(&p, &stats, CounterStarts::at(5), None);
    let t = p.values().next().unwrap().3;
    assert!(t >= before && t <= unix_nanos_now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_once_reports_failures() {
    let source: StatsSource = Arc::new(|| Ok(testdata::stats()));
    // A collector answering 503.
    let (addr, _) = collector(503, b"overloaded".to_vec()).await;
    let endpoint: Uri = format!("http://{addr}/v1/metrics").parse().unwrap();
    let e = push_once(&endpoint, CounterStarts::at(0), &source)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("503"), "{e:#}");
    // Rejected data points.
    let answer = ExportMetricsServiceResponse {
        partial_success: Some(
            opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "bad".into(),
            },
        ),
    }
    .encode_to_vec();
    let (addr, _) = collector(200, answer).await;
    let endpoint: Uri = format!("http://{addr}/v1/metrics").parse().unwrap();
    let e = push_once(&endpoint, CounterStarts::at(0), &source)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("rejected 3"), "{e:#}");
    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint: Uri = format!("http://127.0.0.1:{port}/v1/metrics")
        .parse()
        .unwrap();
    let e = push_once(&endpoint, CounterStarts::at(0), &source)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("connecting"), "{e:#}");
    // The source failing.
    let bad: StatsSource = Arc::new(|| Err(anyhow!("no maps")));
    let e = push_once(&endpoint, CounterStarts::at(0), &bad)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no maps"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_otlp_keeps_going_after_failures() {
    let (addr, got) = collector(200, Vec::new()).await;
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = calls.clone();
    // Every other read of the counters fails.
    let source: StatsSource = Arc::new(move || {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .is_multiple_of(2)
        {
            Err(anyhow!("transient"))
        } else {
            Ok(testdata::stats())
        }
    });
    let endpoint: Uri = format!("http://{addr}/v1/metrics").parse().unwrap();
    let task = tokio::spawn(push_otlp(
        endpoint,
        Duration::from_millis(50),
        CounterStarts::at(1),
        source,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no pushes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!task.is_finished());
    task.abort();
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 6);
}

#[tokio::test]
async fn push_otlp_returns_on_a_bad_endpoint() {
    let source: StatsSource = Arc::new(|| Ok(Stats::default()));
    tokio::time::timeout(
        Duration::from_secs(5),
        push_otlp(
            "ftp://127.0.0.1:4318/v1/metrics".parse().unwrap(),
            Duration::from_secs(1),
            CounterStarts::at(0),
            source,
        ),
    )
    .await
    .expect("returns at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_once_is_bounded() {
    // Accepts, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            conns.push(s);
        }
    });
    let source: StatsSource = Arc::new(|| Ok(Stats::default()));
    let endpoint: Uri = format!("http://{addr}/v1/metrics").parse().unwrap();
    let started = std::time::Instant::now();
    let e = push_once(&endpoint, CounterStarts::at(0), &source)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(format!("{e:#}").contains("no answer within"), "{e:#}");
    assert!(took >= PUSH_TIMEOUT && took < PUSH_TIMEOUT + Duration::from_secs(5));
    hold.abort();
}

#[test]
fn the_resource_names_the_node_when_kubernetes_says_it() {
    let keys = |node| {
        attrs(&super::resource_attributes(
            node,
            "0c4915b8-9594-49c4-9b95-13b0f9e149c3",
        ))
        .into_iter()
        .collect::<BTreeMap<_, _>>()
    };
    let plain = keys(None);
    assert_eq!(plain["service.name"], "dt-agent");
    assert_eq!(plain["host.name"], hostname());
    assert_eq!(
        plain["service.instance.id"],
        "0c4915b8-9594-49c4-9b95-13b0f9e149c3"
    );
    assert!(!plain.contains_key("k8s.node.name"));
    assert!(!keys(Some("")).contains_key("k8s.node.name"));
    assert_eq!(keys(Some("node-7"))["k8s.node.name"], "node-7");
}

/// `dt.disabled.info`'s `reason` attribute is the same fixed token as the Prometheus label.
#[test]
fn why_disabled_is_a_fixed_token() {
    let mut stats = testdata::stats();
    stats.enabled = false;
    stats.disabled_reason = Some(
        "ceiling: dt's kernel programs took 0.1683% of all 2 CPUs over the last 999 ms (3365 µs \
         of CPU time in 2226 runs), over the ceiling of 0.0001%; every request passes untouched \
         until `dt-agent enable`"
            .into(),
    );
    stats.disabled_cause = Some("ceiling".into());
    let p = points(&otlp_request(&stats, CounterStarts::at(1), 2));
    let info: Vec<_> = p
        .iter()
        .filter(|((name, _), _)| name == "dt.disabled.info")
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    let ((_, attributes), (value, is_sum, _, _)) = info[0];
    assert_eq!(
        attributes,
        &BTreeMap::from([("reason".to_string(), "ceiling".to_string())])
    );
    assert_eq!((*value, *is_sum), (1, false));
}

#[test]
fn push_failures_are_said_once_then_now_and_then() {
    let endpoint: Uri = "http://127.0.0.1:4318/v1/metrics".parse().unwrap();
    let e = anyhow::anyhow!("connection refused");
    let said: Vec<u64> = (1..=95)
        .filter(|&n| super::failure_line(&endpoint, n, Duration::from_secs(10), &e).is_some())
        .collect();
    assert_eq!(said, [1, 30, 60, 90]);
    let first = super::failure_line(&endpoint, 1, Duration::from_secs(10), &e).unwrap();
    assert!(
        first.contains("failed: connection refused; trying again every 10s"),
        "{first}"
    );
    let again = super::failure_line(&endpoint, 60, Duration::from_secs(10), &e).unwrap();
    assert!(
        again.contains("still fails (60 in a row): connection refused"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_otlp_stops_once_dt_is_uninstalled() {
    let source: StatsSource = Arc::new(|| Err(crate::stats::Uninstalled.into()));
    tokio::time::timeout(
        Duration::from_secs(5),
        push_otlp(
            "http://127.0.0.1:9/v1/metrics".parse().unwrap(),
            Duration::from_millis(10),
            CounterStarts::at(0),
            source,
        ),
    )
    .await
    .expect("returns at the first push after the uninstall");
}
