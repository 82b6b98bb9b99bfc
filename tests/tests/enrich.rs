//! `[enrich]` through the kernel (README, "Sender identity"): real SDK exporters' requests
//! arrive with the sender's `process.pid` and the host's `host.name` added to their Resources,
//! a sender's own `process.pid` is kept, and a sender started inside a cgroup named like a
//! container's scope arrives with that `container.id`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use dt_agent::kernel::cgroups::ids_of;
use dt_tests::exporter::build_exporter;
use dt_tests::{
    ExportMode, ExportPlan, PlannedRecord, Receiver, TempRules, WAIT, assert_same_records,
    cgroup2_mount, export_with_node, export_with_python_in_cgroup, kernel_or_skip, node_or_skip,
    python_or_skip, start_agent, stats_of,
};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLoggerProvider};

const RULES: &str = r#"
[enrich]
resource_attributes = ["process.pid", "host.name", "container.id", "k8s.pod.uid"]

[[rule]]
name = "drop-debug"
action = "drop"
[rule.match]
severity = "DEBUG"
"#;

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim_end()
        .to_string()
}

/// Each Resource's attributes as text (`int:N` for ints), in order, with its service name.
fn resources(logs: &[ExportLogsServiceRequest]) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for req in logs {
        for rl in &req.resource_logs {
            let attrs: Vec<(String, String)> = rl
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| {
                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.clone(),
                        Some(Value::IntValue(i)) => format!("int:{i}"),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), v)
                })
                .collect();
            let service = attrs
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            out.push((service, attrs));
        }
    }
    out
}

/// The values of the attributes named `key`, in order.
fn values_of(attrs: &[(String, String)], key: &str) -> Vec<String> {
    attrs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// Exports `n` records (every third DEBUG) from a service whose Resource has `extra`, with the
/// real Rust exporter (opentelemetry-otlp, HTTP/protobuf), from this process.
fn export_rust(endpoint: String, service: &'static str, extra: Vec<KeyValue>, n: usize) {
    std::thread::spawn(move || {
        let mut exporter = build_exporter(&endpoint);
        let resource = Resource::builder()
            .with_service_name(service)
            .with_attributes(extra)
            .build();
        exporter.set_resource(&resource);
        let minter = SdkLoggerProvider::builder().build();
        let logger = minter.logger("dt-tests");
        let scope = InstrumentationScope::builder("app").build();
        let records: Vec<_> = (0..n)
            .map(|i| {
                let mut r = logger.create_log_record();
                r.set_timestamp(SystemTime::now());
                r.set_observed_timestamp(SystemTime::now());
                let sev = if i % 3 == 0 {
                    opentelemetry::logs::Severity::Debug
                } else {
                    opentelemetry::logs::Severity::Info
                };
                r.set_severity_number(sev);
                r.set_body(AnyValue::from(format!("{service} record {i}")));
                r
            })
            .collect();
        for chunk in records.chunks(10) {
            let refs: Vec<_> = chunk.iter().map(|r| (r, &scope)).collect();
            futures_executor::block_on(exporter.export(LogBatch::new(&refs))).unwrap();
        }
    })
    .join()
    .unwrap();
}

#[test]
fn senders_are_named_by_pid_and_host_and_their_own_pid_is_kept() {
    if !kernel_or_skip("senders_are_named_by_pid_and_host_and_their_own_pid_is_kept") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-enrich.toml", RULES)]);
    let agent = start_agent(&dir, &[receiver.port()]);
    let endpoint = format!("http://127.0.0.1:{}/v1/logs", receiver.port());
    export_rust(endpoint.clone(), "checkout", Vec::new(), 30);
    export_rust(
        endpoint,
        "billing",
        vec![KeyValue::new("process.pid", 4242_i64)],
        30,
    );
    let got = receiver.wait_for(6, WAIT);
    let stats = stats_of(&agent);
    drop(agent);

    assert!(got.iter().all(|r| r.status == 200));
    let logs: Vec<_> = got.iter().filter_map(|r| r.logs.clone()).collect();
    assert_eq!(logs.len(), 6, "every request decodes");
    // This process may itself run in a container (CI): then its id is added too.
    let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (container, pod) = ids_of(own_cgroup.trim().trim_start_matches("0::"));
    let pid = format!("int:{}", std::process::id());
    for (service, attrs) in resources(&logs) {
        let by_key: BTreeMap<&str, Vec<&str>> =
            attrs.iter().fold(BTreeMap::new(), |mut m, (k, v)| {
                m.entry(k.as_str()).or_default().push(v.as_str());
                m
            });
        let want_pid = if service == "billing" {
            "int:4242"
        } else {
            &pid
        };
        assert_eq!(
            by_key["process.pid"],
            vec![want_pid],
            "{service}: {attrs:?}"
        );
        assert_eq!(by_key["host.name"], vec![host_name().as_str()], "{service}");
        assert_eq!(
            by_key.get("container.id").cloned(),
            container.as_deref().map(|c| vec![c]),
            "{service}"
        );
        assert_eq!(
            by_key.get("k8s.pod.uid").cloned(),
            pod.as_deref().map(|p| vec![p])
        );
        // The sender's own attributes come first, as sent; what dt adds follows.
        let at = |k: &str| attrs.iter().position(|(key, _)| key == k).unwrap();
        assert!(at("service.name") < at("host.name"), "{attrs:?}");
    }
    // The rules still apply: a third of the records were DEBUG.
    assert_eq!(stats.rule("drop-debug").unwrap().dropped, 20);
    assert_eq!(stats.totals.records, 60);
    assert!(stats.totals.bytes_out > stats.totals.bytes_in - 20 * 40);
    assert_eq!(stats.totals.passthrough["enrich"], 0);
}

/// A cgroup named like a Docker container's scope, removed on drop.
struct ScopeCgroup {
    slice: PathBuf,
    scope: PathBuf,
}

impl ScopeCgroup {
    fn create(id: &str) -> ScopeCgroup {
        let root = cgroup2_mount().expect("a cgroup v2 hierarchy");
        let slice = root.join(format!("dt-test-{}.slice", std::process::id()));
        let scope = slice.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&scope).unwrap();
        ScopeCgroup { slice, scope }
    }
}

impl Drop for ScopeCgroup {
    fn drop(&mut self) {
        // The sender has exited; its cgroup is empty.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.scope).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(&self.slice);
    }
}

#[test]
fn a_sender_in_a_container_scope_is_named_by_its_container_id() {
    if !kernel_or_skip("a_sender_in_a_container_scope_is_named_by_its_container_id")
        || python_or_skip("a_sender_in_a_container_scope_is_named_by_its_container_id").is_none()
    {
        return;
    }
    let id: String = (0..64)
        .map(|i| b"0123456789abcdef"[(i * 7 + 3) % 16] as char)
        .collect();
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-enrich.toml", RULES)]);
    let agent = start_agent(&dir, &[receiver.port()]);
    // Created now, a moment before its sender starts: the agent must already know it.
    let cgroup = ScopeCgroup::create(&id);
    std::thread::sleep(Duration::from_millis(600));
    let records: Vec<PlannedRecord> = (0..20)
        .map(|i| PlannedRecord {
            scope: "app".into(),
            severity_number: 9,
            body: format!("from the container {i}"),
            attributes: Vec::new(),
            event_name: None,
        })
        .collect();
    let plan = ExportPlan {
        services: vec![("inventory".into(), records)],
        batch_size: 10,
        mode: ExportMode::Direct,
    };
    let endpoint = format!("http://127.0.0.1:{}/v1/logs", receiver.port());
    let report = export_with_python_in_cgroup(&endpoint, &plan, &cgroup.scope);
    report.assert_all_ok(20);
    let got = receiver.wait_for(2, WAIT);
    drop(agent);
    drop(cgroup);

    let logs: Vec<_> = got.iter().filter_map(|r| r.logs.clone()).collect();
    assert_eq!(logs.len(), 2);
    for (service, attrs) in resources(&logs) {
        assert_eq!(service, "inventory");
        let get = |k: &str| values_of(&attrs, k);
        assert_eq!(get("container.id"), vec![id.clone()], "{attrs:?}");
        assert_eq!(get("host.name"), vec![host_name()]);
        // The Python process's pid: not this test's.
        let pid = get("process.pid");
        assert_eq!(pid.len(), 1);
        assert_ne!(pid[0], format!("int:{}", std::process::id()));
        assert!(get("k8s.pod.uid").is_empty());
    }
}

/// The Node.js SDK sends every export chunked: the kernel inserts the attributes into each
/// request's Resources and rewrites the chunk size (the request grows), and the records the
/// rule drops go in the same pass. The Node.js process's own pid arrives, not this test's.
#[test]
fn node_sdk_chunked_exports_are_named_by_the_node_process() {
    let name = "node_sdk_chunked_exports_are_named_by_the_node_process";
    if !kernel_or_skip(name) || node_or_skip(name).is_none() {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-enrich.toml", RULES)]);
    let agent = start_agent(&dir, &[receiver.port()]);
    let plan = ExportPlan::mixed(600, &["checkout", "payments"], 50);
    let report = export_with_node(&receiver.logs_url(), &plan);
    report.assert_all_ok(plan.total());
    let got = receiver.wait_for(report.batches_ok, WAIT);
    receiver.assert_no_more(report.batches_ok, Duration::from_millis(100));
    let stats = stats_of(&agent);
    drop(agent);

    assert_eq!(stats.totals.passthrough.get("chunked").copied(), Some(0));
    assert_eq!(stats.totals.passthrough["enrich"], 0);
    assert_eq!(stats.totals.log_requests, report.batches_ok as u64);
    assert!(receiver.decode_failures().is_empty());
    for r in &got {
        assert_eq!(r.status, 200);
        assert!(r.chunked, "the request keeps its chunked framing");
    }
    let logs: Vec<_> = got.iter().filter_map(|r| r.logs.clone()).collect();
    assert_eq!(logs.len(), report.batches_ok, "every request decodes");
    assert!(report.pid > 0 && report.pid != std::process::id());
    let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let (container, _) = ids_of(own_cgroup.trim().trim_start_matches("0::"));
    let resources = resources(&logs);
    assert_eq!(resources.len(), report.batches_ok);
    for (service, attrs) in resources {
        let get = |k: &str| values_of(&attrs, k);
        assert_eq!(
            get("process.pid"),
            vec![format!("int:{}", report.pid)],
            "{service}: {attrs:?}"
        );
        assert_eq!(get("host.name"), vec![host_name()], "{service}");
        assert_eq!(
            get("container.id"),
            container.iter().cloned().collect::<Vec<_>>()
        );
        assert_eq!(
            attrs[0].0, "service.name",
            "the sender's own attributes first"
        );
    }
    // The rule applied in the same pass: exactly the DEBUG records (5-8) are gone.
    let kept: Vec<_> = report
        .sent_records()
        .into_iter()
        .filter(|r| !(5..=8).contains(&r.severity_number))
        .collect();
    assert!(kept.len() < plan.total());
    assert_same_records(name, &kept, &receiver.records());
    assert_eq!(
        stats.rule("drop-debug").unwrap().dropped,
        (plan.total() - kept.len()) as u64
    );
}
