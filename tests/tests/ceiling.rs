//! The cost ceiling: a real `dt-agent run` with `[ceiling] cpu` set far below what a steady
//! export load costs its kernel programs. Under that load dt pulls its own rip cord within two
//! windows, the application sees no error (every export succeeds, every record arrives), and
//! `stats` (JSON and table) and the log say why with the measured and allowed figures;
//! `dt-agent enable` re-arms it, and without load it stays armed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dt_tests::agent_process::{AgentProcess, output_text};
use dt_tests::{
    ExportPlan, Receiver, RuleSpec, TempRules, export_with_real_exporter, kernel_or_skip,
};

const WINDOW: Duration = Duration::from_secs(1);

/// This test process in a cgroup of its own for as long as the guard lives: the agent hooks only
/// that cgroup, so what its programs cost is this test's traffic alone, whatever else the
/// machine runs (its sock_ops program would otherwise run for every connection on the host).
struct OwnCgroup {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl OwnCgroup {
    fn enter(name: &str) -> OwnCgroup {
        let root = dt_tests::cgroup2_mount().expect("a cgroup v2 hierarchy");
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        OwnCgroup { dir, root }
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A loopback port free now, for the agent's metrics endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The `dt_disabled_info` lines of a scrape of the agent's metrics endpoint on `port`.
fn disabled_info(port: u16) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: dt\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("a scrape");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .lines()
        .filter(|l| l.starts_with("dt_disabled_info"))
        .map(str::to_string)
        .collect()
}

#[test]
fn over_the_ceiling_dt_disables_itself_and_enable_rearms_it() {
    if !kernel_or_skip("over_the_ceiling_dt_disables_itself_and_enable_rearms_it") {
        return;
    }
    let rules = TempRules::from_rules(&[
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
    ]);
    // First, so that it is dropped last: the agent (started inside it) has exited by then.
    let cgroup = OwnCgroup::enter("dt-test-ceiling");
    let receiver = Receiver::start_v4();
    let mut agent = AgentProcess::new("ceiling", rules.path(), &[receiver.port()], false);
    let metrics_port = free_port();
    agent.write_config(&format!(
        "cgroup = \"{}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\n[ceiling]\n\
         cpu = \"0.0001%\"\nwindow = \"1s\"\n",
        cgroup.dir.display()
    ));
    agent.start();
    assert!(disabled_info(metrics_port).is_empty());

    // Idle: measured, under the ceiling.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cost = loop {
        if let Some(c) = agent.stats().cost {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no measurement:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(cost.cpu_ceiling_ppm, 1);
    assert!(cost.cpus >= 1 && cost.map_bytes > 0, "{cost:?}");
    assert!(agent.stats().enabled);

    // A steady load from the real exporter, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, sent, port) = (stop.clone(), sent.clone(), receiver.port());
        std::thread::spawn(move || {
            let mut reports = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let plan = ExportPlan::mixed(200, &["checkout", "cart"], 50);
                let report = export_with_real_exporter(port, &plan);
                sent.fetch_add(report.sent.len(), Ordering::Relaxed);
                reports.push(report);
            }
            reports
        })
    };
    let started = Instant::now();
    let tripped = loop {
        let s = agent.stats();
        if !s.enabled {
            break s;
        }
        assert!(
            started.elapsed() < 4 * WINDOW,
            "still enabled after {:?} of load: {:?}\n{}",
            started.elapsed(),
            s.cost,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    // Within two windows of the load (and the poll's 50 ms).
    assert!(took <= 2 * WINDOW + Duration::from_millis(300), "{took:?}");
    let why = tripped.disabled_reason.clone().expect("disabled_reason");
    assert!(
        why.starts_with("ceiling: dt's kernel programs took "),
        "{why}"
    );
    assert!(why.contains("over the ceiling of 0.0001%"), "{why}");
    assert_eq!(tripped.disabled_cause.as_deref(), Some("ceiling"));
    let cost = tripped.cost.clone().unwrap();
    assert!(
        cost.cpu_ppm > cost.cpu_ceiling_ppm && cost.exceeded >= 1,
        "{cost:?}"
    );
    agent.wait_log(
        "ceiling: dt's kernel programs took",
        1,
        Duration::from_secs(5),
    );
    let table = agent.verb("stats", &[]);
    let text = output_text(&table);
    assert!(
        text.contains("DISABLED") && text.contains("why: ceiling:"),
        "{text}"
    );
    assert!(text.contains("cost: kernel programs"), "{text}");
    // The metric says it in a fixed word, not with the figures: one series an alert can name,
    // whatever this trip measured.
    assert_eq!(
        disabled_info(metrics_port),
        ["dt_disabled_info{reason=\"ceiling\"} 1"]
    );

    // The load goes on, untouched now.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let reports = load.join().unwrap();
    for r in &reports {
        r.assert_all_ok(r.sent.len());
    }
    let after = agent.stats();
    assert!(
        after.totals.passthrough["disabled"] > 0,
        "{:?}",
        after.totals
    );
    // Every record arrived but those dropped while enabled.
    let total = sent.load(Ordering::Relaxed) as u64;
    receiver.wait_for(reports.iter().map(|r| r.batches_ok).sum(), dt_tests::WAIT);
    assert_eq!(
        receiver.records().len() as u64,
        total - after.totals.records_dropped
    );

    // `enable` re-arms; idle, it stays enabled.
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let s = agent.stats();
    assert!(
        s.enabled && s.disabled_reason.is_none() && s.disabled_cause.is_none(),
        "{s:?}"
    );
    assert!(disabled_info(metrics_port).is_empty());
    std::thread::sleep(3 * WINDOW);
    let s = agent.stats();
    assert!(s.enabled, "{:?}", s.disabled_reason);

    // The rip cord by hand says so.
    let o = agent.verb("disable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let s = agent.stats();
    assert!(
        s.disabled_reason
            .as_deref()
            .is_some_and(|r| r.contains("dt-agent disable")),
        "{s:?}"
    );
    assert_eq!(
        disabled_info(metrics_port),
        ["dt_disabled_info{reason=\"disable\"} 1"]
    );
}

/// `[ceiling] memory`: a rule set whose recorders would take dt's maps over it is refused at
/// `push` with the recorder's position and the figures; one that fits goes in; `stats` reports
/// the maps' kernel memory.
#[test]
fn a_rule_set_over_the_memory_ceiling_is_refused() {
    if !kernel_or_skip("a_rule_set_over_the_memory_ceiling_is_refused") {
        return;
    }
    let rules = TempRules::from_rules(&[RuleSpec::count("count-all")]);
    let receiver = Receiver::start_v4();
    let mut agent = AgentProcess::new("ceiling-memory", rules.path(), &[receiver.port()], false);
    agent.write_config(&format!(
        "capture_endpoint = \"{}\"\n\n[ceiling]\nmemory = \"48MiB\"\ncpu = \"100%\"\nwindow = \"1s\"\n",
        receiver.logs_url()
    ));
    agent.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let base = loop {
        if let Some(c) = agent.stats().cost {
            break c.map_bytes;
        }
        assert!(
            Instant::now() < deadline,
            "no measurement:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(base > 0 && base < 40 << 20, "dt's maps take {base} bytes");
    let generation = agent.rules().generation;

    let src = tempfile::tempdir().unwrap();
    let recorder = |size: &str| {
        format!(
            "[[recorder]]\nname = \"big\"\nsize = \"{size}\"\n\n[[rule]]\nname = \"keep-debug\"\n\
             action = \"drop\"\nrecorder = \"big\"\n[rule.match]\nseverity = \"DEBUG\"\n"
        )
    };
    let file = src.path().join("20-recorder.toml");
    std::fs::write(&file, recorder("64MiB")).unwrap();
    let out = agent.push(&[&file]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("20-recorder.toml:2:8: recorder \"big\"")
            && text.contains("over the memory ceiling of 49152 KiB"),
        "{text}"
    );
    assert_eq!(agent.rules().generation, generation, "nothing changed");

    std::fs::write(&file, recorder("1MiB")).unwrap();
    let out = agent.push(&[&file]);
    assert!(out.status.success(), "{}", output_text(&out));
    // The ring counts in the maps' memory.
    std::thread::sleep(Duration::from_millis(2500));
    let after = agent.stats().cost.unwrap().map_bytes;
    assert!(after >= base + (1 << 20), "{base} then {after}");
}

/// A `run` refused after loading dt's object (here `[ceiling] memory` below what dt's maps
/// take) leaves nothing behind: on a fresh pin directory no pins; over a pinned filter it
/// would adopt, that filter's ports, size bound and counters as they were.
#[test]
fn a_refused_run_leaves_no_pins_and_changes_no_pinned_filter() {
    if !kernel_or_skip("a_refused_run_leaves_no_pins_and_changes_no_pinned_filter") {
        return;
    }
    let rules = TempRules::from_rules(&[RuleSpec::count("count-all")]);
    let receiver = Receiver::start_v4();
    let other = Receiver::start_v4();
    let mut agent = AgentProcess::new("refused-run", rules.path(), &[receiver.port()], true);
    let refused_by = |agent: &AgentProcess, extra: &[&str], config: &str, why: &str| {
        agent.write_config(config);
        let mut cmd = std::process::Command::new(dt_tests::agent_process::bin());
        cmd.args(agent.run_args()).args(extra);
        let out = dt_tests::agent_process::dt_agent_cmd(cmd, Duration::from_secs(60), "run");
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(why), "{text}");
    };
    let refused = |agent: &AgentProcess, extra: &[&str]| {
        let config = "[ceiling]\nmemory = \"1MiB\"\n";
        refused_by(agent, extra, config, "[ceiling] memory = 1024 KiB is below");
    };
    refused(&agent, &[]);
    assert!(
        !agent.pin_dir().join("CONTROL").exists(),
        "a refused start on fresh pins leaves none"
    );

    // A pinned filter, its agent stopped: it goes on filtering.
    agent.write_config("");
    agent.start();
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    assert!(agent.pin_dir().join("CONTROL").exists());
    let send = |port: u16| {
        let plan = ExportPlan::mixed(10, &["checkout"], 10);
        export_with_real_exporter(port, &plan).assert_all_ok(10);
    };
    send(receiver.port());
    let before = agent.stats();
    assert_eq!(before.rule("count-all").unwrap().matched, 10);
    let other_port = other.port().to_string();
    refused(&agent, &["--port", &other_port, "--max-request", "1024"]);
    // Refused later, when a probe of the rules does not attach (the last check before the
    // rule set goes in): the same.
    let probe = rules.path().join("50-probe.toml");
    std::fs::write(
        &probe,
        "[[probe]]\nname = \"app\"\nbinary = \"libc\"\nsymbol = \"dt_no_such_function\"\n\
         message_arg = 0\n\n[[rule]]\nname = \"count-app\"\naction = \"count\"\n\
         hooks = [\"uprobe:app\"]\n",
    )
    .unwrap();
    refused_by(
        &agent,
        &["--port", &other_port, "--max-request", "1024"],
        "",
        "no function \"dt_no_such_function\"",
    );
    std::fs::remove_file(&probe).unwrap();
    agent.write_config("");
    // The pins are still there, the filter's ports are not changed (the other port is not
    // hooked) and its size bound is not (a request over 1024 bytes is still walked).
    assert!(agent.pin_dir().join("CONTROL").exists());
    send(other.port());
    send(receiver.port());
    let after = agent.stats();
    assert_eq!(after.rule("count-all").unwrap().matched, 20, "{after:?}");
    assert_eq!(
        after
            .totals
            .passthrough
            .get("oversize")
            .copied()
            .unwrap_or(0),
        0
    );
    assert_eq!(after.totals.requests, before.totals.requests + 1);
}

/// Why the rip cord is pulled outlives the agent that pulled it (it is kept in the pinned
/// CONTROL map): `stats` read from the pins with no agent, and an agent that adopts them, say
/// it was the ceiling, or a hand.
#[test]
fn the_rip_cords_reason_survives_a_pinned_restart() {
    if !kernel_or_skip("the_rip_cords_reason_survives_a_pinned_restart") {
        return;
    }
    let rules = TempRules::from_rules(&[RuleSpec::count("count-all")]);
    let receiver = Receiver::start_v4();
    let root = std::path::Path::new(dt_tests::agent_process::BPFFS)
        .join(format!("dt-test-op-reason-{}", std::process::id()));
    let mut cfg = dt_tests::agent_config(&rules, &[receiver.port()]);
    cfg.pin_root = Some(root.clone());
    let why = |s: &dt_agent::Stats| s.disabled_reason.clone().unwrap_or_default();

    let mut a = dt_tests::start_agent_with(cfg.clone());
    a.trip("ceiling: dt's kernel programs took 9% (test)".into())
        .unwrap();
    let s = dt_tests::stats_of(&a);
    assert_eq!(s.disabled_cause.as_deref(), Some("ceiling"));
    assert!(why(&s).contains("took 9% (test)"), "{}", why(&s));
    // Pulled again on the maps directly (as the client of a hung agent does): the kernel's
    // record of who pulled it is what stats says, not this agent's words for its own pull.
    dt_agent::agent::pinned_set_enabled(&root, false).unwrap();
    let s = dt_tests::stats_of(&a);
    assert_eq!(s.disabled_cause.as_deref(), Some("disable"), "{}", why(&s));
    assert!(why(&s).contains("dt-agent disable"), "{}", why(&s));
    a.trip("ceiling: dt's kernel programs took 9% (test)".into())
        .unwrap();
    drop(a);
    // The metric's reason is the cause's fixed word, with or without the figures.
    let info = |s: &dt_agent::Stats| -> Vec<String> {
        dt_agent::metrics::render_prometheus(s)
            .lines()
            .filter(|l| l.starts_with("dt_disabled_info"))
            .map(str::to_string)
            .collect()
    };
    let s = dt_agent::agent::pinned_stats(&root).unwrap();
    assert!(
        !s.enabled && why(&s).starts_with("ceiling: the cost ceiling was exceeded"),
        "{}",
        why(&s)
    );
    assert_eq!(info(&s), ["dt_disabled_info{reason=\"ceiling\"} 1"]);
    assert_eq!(s.disabled_cause.as_deref(), Some("ceiling"));
    let mut b = dt_tests::start_agent_with(cfg.clone());
    let s = dt_tests::stats_of(&b);
    assert!(!s.enabled && why(&s).starts_with("ceiling:"), "{}", why(&s));
    assert_eq!(info(&s), ["dt_disabled_info{reason=\"ceiling\"} 1"]);

    // By hand: said so, after the agent too.
    b.set_enabled(true).unwrap();
    b.set_enabled(false).unwrap();
    drop(b);
    let s = dt_agent::agent::pinned_stats(&root).unwrap();
    assert!(why(&s).contains("dt-agent disable"), "{}", why(&s));
    assert_eq!(info(&s), ["dt_disabled_info{reason=\"disable\"} 1"]);
    assert_eq!(s.disabled_cause.as_deref(), Some("disable"));
    let mut c = dt_tests::start_agent_with(cfg);
    let s = dt_tests::stats_of(&c);
    assert!(why(&s).contains("dt-agent disable"));
    assert_eq!(info(&s), ["dt_disabled_info{reason=\"disable\"} 1"]);
    c.uninstall().unwrap();
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
}
