//! Remote configuration over OpAMP, against the tests' own OpAMP server
//! (`tests/python/opamp_server.py`, written from the spec's messages with the `opamp_pb2`
//! module of OpenTelemetry's Python OpAMP client), with a real `dt-agent run`: the server's
//! remote config becomes the remote part of the rule set and filters real traffic in the
//! kernel; a bad one is refused with its positions and changes nothing; a new one replaces the
//! old whole; the agent describes itself, reports its effective config and health, honours
//! `ReportFullState`, backs off when the server fails, and comes back after a restart without
//! the server with the last config it applied and the same instance id.

use std::path::Path;
use std::time::{Duration, Instant};

use dt_tests::agent_process::{AgentProcess, output_text};
use dt_tests::opamp::{AgentMessage, OpampServer};
use dt_tests::{
    ExportPlan, Receiver, RuleSpec, TempRules, WAIT, evaluate, export_with_real_exporter,
    kernel_or_skip, python_or_skip,
};

const WAIT_OPAMP: Duration = Duration::from_secs(20);

fn config(state_dir: &Path, endpoint: &str) -> String {
    format!(
        "state_dir = \"{}\"\n\n[opamp]\nendpoint = \"{endpoint}\"\npoll_interval = \"1s\"\n",
        state_dir.display()
    )
}

/// An OpAMP server, a rules directory with the local rule `local-count`, a receiver, a state
/// directory and an agent (not started) for them.
struct Setup {
    server: OpampServer,
    local: RuleSpec,
    rules: TempRules,
    receiver: Receiver,
    state: tempfile::TempDir,
    agent: AgentProcess,
}

fn setup(name: &str) -> Setup {
    setup_with(name, OpampServer::start())
}

/// [`setup`] with this server.
fn setup_with(name: &str, server: OpampServer) -> Setup {
    let local = RuleSpec::count("local-count");
    let rules = TempRules::from_rules(std::slice::from_ref(&local));
    let receiver = Receiver::start_v4();
    let state = tempfile::Builder::new()
        .prefix("dt-opamp-state-")
        .tempdir()
        .unwrap();
    let agent = AgentProcess::new(name, rules.path(), &[receiver.port()], false);
    Setup {
        server,
        local,
        rules,
        receiver,
        state,
        agent,
    }
}

/// The active rules' (name, source file) and the generation.
fn active(agent: &AgentProcess) -> (Vec<(String, String)>, u64) {
    let info = agent.rules();
    (
        info.rules
            .iter()
            .map(|r| (r.name.clone(), r.file.display().to_string()))
            .collect(),
        info.generation,
    )
}

fn names(agent: &AgentProcess) -> Vec<String> {
    active(agent).0.into_iter().map(|(n, _)| n).collect()
}

/// The first message whose remote config status has `hash` and `status`.
fn wait_status(server: &OpampServer, hash: &str, status: &str, what: &str) -> AgentMessage {
    let msgs = server.wait_for(what, WAIT_OPAMP, |m| {
        m.iter().any(|m| {
            m.remote_config_status
                .as_ref()
                .is_some_and(|s| s.hash == hash && s.status == status)
        })
    });
    msgs.into_iter()
        .find(|m| {
            m.remote_config_status
                .as_ref()
                .is_some_and(|s| s.hash == hash && s.status == status)
        })
        .unwrap()
}

#[test]
fn remote_rules_over_opamp() {
    if !kernel_or_skip("remote_rules_over_opamp")
        || python_or_skip("remote_rules_over_opamp").is_none()
    {
        return;
    }
    let Setup {
        server,
        local,
        rules,
        receiver,
        state,
        mut agent,
    } = setup("opamp");
    agent.write_config(&config(state.path(), &server.endpoint()));
    agent.start();

    // The first message: the whole status.
    let msgs = server.wait_for("a first status report", WAIT_OPAMP, |m| {
        m.iter().any(|m| m.description.is_some())
    });
    let first = &msgs[0];
    assert_eq!(first.sequence_num, 0);
    assert_eq!(first.instance_uid.len(), 32, "16 bytes");
    let uid = first.instance_uid.clone();
    assert_eq!(
        first.uid_header.as_deref().map(|h| h.replace('-', "")),
        Some(uid.clone()),
        "the OpAMP-Instance-UID header"
    );
    assert_eq!(
        first.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    let d = first.description.as_ref().expect("description");
    assert_eq!(d.identifying["service.name"], "dt-agent");
    assert_eq!(d.identifying["service.version"], env!("CARGO_PKG_VERSION"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(d.non_identifying["host.name"], host.trim());
    assert_eq!(d.non_identifying["os.type"], "linux");
    // ReportsStatus, AcceptsRemoteConfig, ReportsEffectiveConfig, ReportsHealth,
    // ReportsRemoteConfig.
    assert_eq!(first.capabilities, 0x1 | 0x2 | 0x4 | 0x800 | 0x1000);
    let h = first.health.as_ref().expect("health");
    assert!(h.healthy, "{h:?}");
    assert!(h.status.starts_with("filtering"), "{h:?}");
    assert!(h.start_time_unix_nano > 0);
    let eff = first.effective_config.as_ref().expect("effective config");
    assert_eq!(
        eff.keys().collect::<Vec<_>>(),
        vec!["50-test.toml"],
        "{eff:?}"
    );
    assert!(eff["50-test.toml"].contains("local-count"));

    // Later polls carry only what changed: nothing, here.
    let msgs = server.wait_for("polls", WAIT_OPAMP, |m| m.len() >= 3);
    let poll = &msgs[2];
    assert!(
        poll.description.is_none() && poll.health.is_none() && poll.effective_config.is_none(),
        "{poll:?}"
    );

    // A remote config: its *.toml entries become the remote part, after the directory's files.
    let remote_drop = RuleSpec::drop("remote-drop-debug").severity("<=DEBUG", 1..=8);
    let readme = "not a rule file: left out";
    let h1 = server.set_config(&[
        ("50-remote.toml", &remote_drop.to_toml()),
        ("README", readme),
    ]);
    let applied = wait_status(&server, &h1, "APPLIED", "the first remote config");
    assert_eq!(
        applied.remote_config_status.as_ref().unwrap().error_message,
        ""
    );
    let (rules_now, g1) = active(&agent);
    assert_eq!(
        rules_now,
        vec![
            (
                "local-count".to_string(),
                rules.file("50-test.toml").display().to_string()
            ),
            (
                "remote-drop-debug".to_string(),
                "opamp/50-remote.toml".to_string()
            ),
        ]
    );
    // The effective config says so too.
    let msgs = server.wait_for(
        "the effective config with the remote file",
        WAIT_OPAMP,
        |m| {
            m.iter().any(|m| {
                m.effective_config
                    .as_ref()
                    .is_some_and(|e| e.contains_key("opamp/50-remote.toml"))
            })
        },
    );
    let eff = msgs
        .iter()
        .rev()
        .find_map(|m| m.effective_config.clone())
        .unwrap();
    assert_eq!(eff["opamp/50-remote.toml"], remote_drop.to_toml());
    assert!(!eff.contains_key("opamp/README"));

    // And it filters the host's traffic in the kernel.
    let plan = ExportPlan::mixed(200, &["checkout", "cart"], 50);
    let report = export_with_real_exporter(receiver.port(), &plan);
    report.assert_all_ok(200);
    receiver.wait_for(report.batches_ok, WAIT);
    let expected = evaluate(&[local.clone(), remote_drop.clone()], &report.sent);
    assert!(expected.records_dropped > 0);
    assert_eq!(receiver.records().len(), expected.kept.len());
    let stats = agent.stats();
    assert_eq!(
        stats.rule("remote-drop-debug").unwrap().dropped,
        expected.records_dropped
    );

    // A bad config: FAILED with every position, and nothing changes.
    let bad = "[[rule]]\nname = \"x\"\naction = \"explode\"\n\n[[rule]]\nname = \"local-count\"\naction = \"count\"\n";
    let h2 = server.set_config(&[("50-remote.toml", bad)]);
    let failed = wait_status(&server, &h2, "FAILED", "the bad remote config");
    let err = &failed.remote_config_status.as_ref().unwrap().error_message;
    assert!(
        err.contains("opamp/50-remote.toml:3:10: unknown action"),
        "{err}"
    );
    assert!(
        err.contains("opamp/50-remote.toml:6:8:") && err.contains("local-count"),
        "the duplicate name is reported too: {err}"
    );
    assert_eq!(active(&agent).1, g1, "the active set stays");
    assert_eq!(names(&agent), vec!["local-count", "remote-drop-debug"]);
    assert!(
        agent
            .log()
            .contains("opamp/50-remote.toml:3:10: unknown action")
    );
    let refused = agent.rules().rules_error.expect("rules_error after FAILED");
    assert!(
        refused.starts_with("a remote config was refused:\n")
            && refused.contains("opamp/50-remote.toml:3:10: unknown action"),
        "{refused}"
    );
    // A file name that cannot be one: refused before it is read, and said the same way.
    let h_name = server.set_config(&[(".hidden.toml", bad)]);
    wait_status(&server, &h_name, "FAILED", "the badly named remote config");
    let refused = agent.rules().rules_error.expect("rules_error after FAILED");
    assert!(
        refused.starts_with("a remote config was refused:\n")
            && refused.contains("opamp/.hidden.toml")
            && !refused.contains("unknown action"),
        "{refused}"
    );
    assert_eq!(active(&agent).1, g1, "the active set stays");

    // A new config replaces the old one whole.
    let other = RuleSpec::count("remote-count");
    let h3 = server.set_config(&[("60-other.toml", &other.to_toml())]);
    wait_status(&server, &h3, "APPLIED", "the third remote config");
    assert_eq!(names(&agent), vec!["local-count", "remote-count"]);

    // ReportFullState: the next message carries everything again.
    let before = server.messages().len();
    server.report_full_state();
    let msgs = server.wait_for("a full state after ReportFullState", WAIT_OPAMP, |m| {
        m[before..].iter().any(|m| {
            m.description.is_some()
                && m.health.is_some()
                && m.effective_config.is_some()
                && m.remote_config_status.is_some()
        })
    });
    let full = msgs[before..]
        .iter()
        .find(|m| m.description.is_some())
        .unwrap();
    assert_eq!(full.remote_config_status.as_ref().unwrap().hash, h3);

    // Health follows the rip cord.
    let o = agent.verb("disable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    server.wait_for("health: disabled", WAIT_OPAMP, |m| {
        m.iter().any(|m| {
            m.health
                .as_ref()
                .is_some_and(|h| !h.healthy && h.status.starts_with("disabled"))
        })
    });
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let n = server.messages().len();
    server.wait_for("health: filtering again", WAIT_OPAMP, |m| {
        m[n..]
            .iter()
            .any(|m| m.health.as_ref().is_some_and(|h| h.healthy))
    });

    // The server fails: the agent backs off (honouring Retry-After), the control socket
    // answers all along, and status reporting resumes afterwards.
    server.fail(3, Some(1));
    let t0 = Instant::now();
    while server.rejected().len() < 3 {
        assert!(agent.stats().enabled);
        assert!(t0.elapsed() < WAIT_OPAMP, "three rejected attempts");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rejected = server.rejected();
    for w in rejected.windows(2) {
        assert!(
            w[1] - w[0] >= 0.9,
            "at least the Retry-After between attempts: {rejected:?}"
        );
    }
    let n = server.messages().len();
    server.wait_for("messages after the failures", WAIT_OPAMP, |m| m.len() > n);
    assert!(
        agent.log().contains("retrying with backoff"),
        "{}",
        agent.log()
    );

    // A restart with the server gone: the agent comes up with the last applied config. Its
    // last message before it stops says it disconnects, as the spec asks.
    let n = server.messages().len();
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let msgs = server.messages();
    assert!(
        msgs.len() > n && msgs.last().unwrap().disconnect,
        "the last message is no disconnect: {:?}",
        &msgs[n..]
    );
    assert!(
        msgs[..msgs.len() - 1].iter().all(|m| !m.disconnect),
        "a disconnect before the last message"
    );
    assert!(
        agent.log().contains("OpAMP: disconnected"),
        "{}",
        agent.log()
    );
    let old_endpoint = server.endpoint();
    drop(server);
    agent.write_config(&config(state.path(), &old_endpoint));
    agent.start();
    assert_eq!(names(&agent), vec!["local-count", "remote-count"]);
    assert!(
        agent.log().contains("starting with the last remote config"),
        "{}",
        agent.log()
    );
    // ... and keeps its instance id for the next server.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let server = OpampServer::start();
    agent.write_config(&config(state.path(), &server.endpoint()));
    agent.start();
    let msgs = server.wait_for("the restarted agent's report", WAIT_OPAMP, |m| {
        m.iter().any(|m| m.remote_config_status.is_some())
    });
    assert_eq!(msgs[0].instance_uid, uid, "the instance id is kept");
    let s = msgs[0].remote_config_status.as_ref().unwrap();
    assert_eq!(
        (s.hash.as_str(), s.status.as_str()),
        (h3.as_str(), "APPLIED")
    );

    // Without [opamp], the remote part is not used.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    agent.write_config(&format!("state_dir = \"{}\"\n", state.path().display()));
    agent.start();
    assert_eq!(names(&agent), vec!["local-count"]);
}

/// A kept remote config that compiles but does not start (its recorder needs the capture
/// endpoint this restart's config no longer has): the agent starts without it, on its local
/// rules, filtering, and the server hears FAILED with the reason; it does not exit.
#[test]
fn a_kept_config_that_no_longer_starts_is_set_aside() {
    let test = "a_kept_config_that_no_longer_starts_is_set_aside";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let Setup {
        server,
        rules: _rules,
        receiver,
        state,
        mut agent,
        ..
    } = setup("opamp-aside");
    let with_capture = format!(
        "capture_endpoint = \"{}\"\n{}",
        receiver.logs_url(),
        config(state.path(), &server.endpoint())
    );
    agent.write_config(&with_capture);
    agent.start();
    let recorder = "[[recorder]]\nname = \"remote-rec\"\nsize = \"1MiB\"\n\n\
                    [[rule]]\nname = \"remote-record-debug\"\naction = \"drop\"\n\
                    recorder = \"remote-rec\"\n[rule.match]\nseverity = \"DEBUG\"\n";
    let h = server.set_config(&[("50-remote.toml", recorder)]);
    wait_status(&server, &h, "APPLIED", "the recorder config");
    assert_eq!(names(&agent), vec!["local-count", "remote-record-debug"]);

    // Restarted without the capture endpoint.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));
    let seen = server.messages().len();
    agent.write_config(&config(state.path(), &server.endpoint()));
    agent.start();
    assert_eq!(names(&agent), vec!["local-count"]);
    assert!(
        agent
            .log()
            .contains("the last remote config does not start; starting without it"),
        "{}",
        agent.log()
    );
    let plan = ExportPlan::mixed(200, &["checkout"], 100);
    export_with_real_exporter(receiver.port(), &plan).assert_all_ok(200);
    let stats = agent.stats();
    assert_eq!(stats.rule("local-count").unwrap().matched, 200);

    // The server hears FAILED, with the reason, for the kept config's hash.
    let msgs = server.wait_for("the set-aside config", WAIT_OPAMP, |m| {
        m[seen..].iter().any(|m| {
            m.remote_config_status
                .as_ref()
                .is_some_and(|s| s.hash == h && s.status == "FAILED")
        })
    });
    let failed = msgs[seen..]
        .iter()
        .find_map(|m| {
            m.remote_config_status
                .as_ref()
                .filter(|s| s.status == "FAILED")
        })
        .unwrap();
    let e = &failed.error_message;
    assert!(e.contains("capture_endpoint"), "{e}");

    // The refusal stands in `rules` and `stats`; SIGHUP retries refused rule files of the
    // directory only, so it stands after one too, with no new generation.
    let info = agent.rules();
    let refused = info
        .rules_error
        .clone()
        .expect("rules_error after the set-aside");
    assert!(
        refused.starts_with("the last remote config was set aside at start:\n")
            && refused.contains("capture_endpoint"),
        "{refused}"
    );
    agent.signal(libc::SIGHUP);
    wait_log(&agent, "SIGHUP: reading the rules directory again");
    std::thread::sleep(Duration::from_millis(500));
    let after = agent.rules();
    assert_eq!(
        after.generation, info.generation,
        "SIGHUP made a generation"
    );
    assert_eq!(after.rules_error.as_deref(), Some(refused.as_str()));
}

/// A remote config refused because one of its rules has the name of a local one applies once
/// the local file is gone: the directory's change tries it again, the server hears APPLIED for
/// it, and `rules_error` clears.
#[test]
fn a_remote_config_refused_for_a_local_clash_applies_once_the_local_file_goes() {
    let test = "a_remote_config_refused_for_a_local_clash_applies_once_the_local_file_goes";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let Setup {
        server,
        rules,
        state,
        mut agent,
        ..
    } = setup("opamp-clash");
    agent.write_config(&config(state.path(), &server.endpoint()));
    agent.start();
    let clash = rules.write("30-clash.toml", &RuleSpec::count("x1").to_toml());
    let deadline = Instant::now() + WAIT_OPAMP;
    while !names(&agent).contains(&"x1".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the local x1 never became active"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = server.set_config(&[("50-x.toml", &RuleSpec::count("x1").to_toml())]);
    let failed = wait_status(&server, &h, "FAILED", "the clashing remote config");
    let err = &failed.remote_config_status.as_ref().unwrap().error_message;
    assert!(err.contains("duplicate rule name \"x1\""), "{err}");
    assert!(agent.rules().rules_error.is_some());

    // The local file goes: the remote config applies with the directory's change.
    std::fs::remove_file(&clash).unwrap();
    wait_status(&server, &h, "APPLIED", "the remote config applied late");
    let (active, _) = active(&agent);
    assert!(
        active
            .iter()
            .any(|(n, f)| n == "x1" && f.ends_with("opamp/50-x.toml")),
        "{active:?}"
    );
    assert_eq!(agent.rules().rules_error, None);
    assert!(
        agent
            .log()
            .contains("the remote config refused before applies with it"),
        "{}",
        agent.log()
    );
}

/// The remote config of the TLS tests: a rule that drops DEBUG records.
const REMOTE_DROP_DEBUG: &str = "[[rule]]\nname = \"remote-drop-debug\"\naction = \"drop\"\n\
                                 [rule.match]\nseverity = \"DEBUG\"\n";

/// Waits (20 s at most) until the agent's log shows `needle`.
fn wait_log(agent: &AgentProcess, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log().contains(needle) {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With [`REMOTE_DROP_DEBUG`] applied, 200 records of a real exporter: the rule dropped some, and
/// the records that arrive are the ones it kept. The stats after.
fn assert_remote_drop_filters(agent: &AgentProcess, receiver: &Receiver) -> dt_agent::Stats {
    assert_eq!(names(agent), vec!["local-count", "remote-drop-debug"]);
    let plan = ExportPlan::mixed(200, &["checkout"], 100);
    export_with_real_exporter(receiver.port(), &plan).assert_all_ok(200);
    let stats = agent.stats();
    let dropped = stats.rule("remote-drop-debug").unwrap().dropped;
    assert!(dropped > 0, "{stats:?}");
    assert_eq!(
        receiver.records().len() as u64,
        200 - dropped,
        "the records that arrive are the ones the remote rule kept"
    );
    stats
}

/// OpAMP over `https://`: the agent checks the server's certificate against the CA
/// certificates it trusts (here `SSL_CERT_FILE`), and takes no config from a server whose
/// certificate no trusted CA signed; with the right CA it applies the server's config, which
/// filters real traffic.
#[test]
fn remote_rules_over_opamp_with_tls() {
    let test = "remote_rules_over_opamp_with_tls";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let ca = dt_tests::tls::TestCa::new("opamp");
    let other = dt_tests::tls::TestCa::new("other");
    let Setup {
        server,
        rules: _rules,
        receiver,
        state,
        mut agent,
        ..
    } = setup_with("opamp-tls", OpampServer::start_tls(&ca.cert, &ca.key));
    assert!(server.endpoint().starts_with("https://127.0.0.1:"));
    agent.write_config(&config(state.path(), &server.endpoint()));
    let h = server.set_config(&[("50-remote.toml", REMOTE_DROP_DEBUG)]);

    // Trusting another CA: the handshake fails, nothing reaches the server, and nothing of its
    // config is applied.
    agent.set_env("SSL_CERT_FILE", Some(other.ca.to_str().unwrap()));
    agent.start();
    wait_log(&agent, "invalid peer certificate");
    assert!(agent.log().contains("UnknownIssuer"), "{}", agent.log());
    assert_eq!(server.messages().len(), 0);
    assert_eq!(names(&agent), vec!["local-count"]);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));

    // Trusting the server's CA: the config is applied, and filters.
    agent.set_env("SSL_CERT_FILE", Some(ca.ca.to_str().unwrap()));
    agent.start();
    wait_status(&server, &h, "APPLIED", "the config over TLS");
    let stats = assert_remote_drop_filters(&agent, &receiver);
    assert_eq!(stats.rule("local-count").unwrap().matched, 200);
}

#[test]
fn remote_rules_over_opamp_with_a_client_certificate() {
    let test = "remote_rules_over_opamp_with_a_client_certificate";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let ca = dt_tests::tls::TestCa::new("opamp-mtls");
    let Setup {
        server,
        rules: _rules,
        receiver,
        state,
        mut agent,
        ..
    } = setup_with(
        "opamp-mtls",
        OpampServer::start_tls_client_auth(&ca.cert, &ca.key, &ca.ca),
    );
    let h = server.set_config(&[("50-remote.toml", REMOTE_DROP_DEBUG)]);
    // The server's CA from `ca_file`, not the environment: SSL_CERT_FILE names the system's
    // bundle, which does not hold it.
    agent.set_env("SSL_CERT_FILE", Some("/nonexistent/dt-test-bundle.pem"));
    let base = format!(
        "{}ca_file = \"{}\"\n",
        config(state.path(), &server.endpoint()),
        ca.ca.display()
    );

    // No client certificate: the server refuses the handshake, and nothing is applied.
    agent.write_config(&base);
    agent.start();
    wait_log(&agent, "retrying with backoff");
    assert_eq!(server.messages().len(), 0, "{}", agent.log());
    assert_eq!(names(&agent), vec!["local-count"]);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(20));

    // A client key that is not PEM: `run` refuses to start, naming the file, before attaching
    // anything.
    let bad_key = state.path().join("bad.key");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    agent.write_config(&format!(
        "{base}client_cert = \"{}\"\nclient_key = \"{}\"\n",
        ca.client_cert.display(),
        bad_key.display()
    ));
    let out = dt_tests::agent_process::dt_agent_cmd(
        {
            let mut c = std::process::Command::new(dt_tests::agent_process::bin());
            c.args(agent.run_args());
            c
        },
        Duration::from_secs(30),
        "run with a bad OpAMP client key",
    );
    let text = dt_tests::agent_process::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("OpAMP TLS: client key {}", bad_key.display())),
        "{text}"
    );

    // With the client certificate: the config is applied, and filters.
    agent.write_config(&format!(
        "{base}client_cert = \"{}\"\nclient_key = \"{}\"\n",
        ca.client_cert.display(),
        ca.client_key.display()
    ));
    agent.start();
    wait_status(&server, &h, "APPLIED", "the config over mutual TLS");
    assert_remote_drop_filters(&agent, &receiver);
}

/// What real servers do that the spec allows and `remote_rules_over_opamp` does not meet: a
/// server that wants a token header; one that does not take effective configs; a config of one
/// entry without a name (opamp-go's example server sends that); a config with no rule file
/// (refused, not taken as "no rules"); throttling with a ServerErrorResponse UNAVAILABLE and its
/// `retry_info`; a message refused as too large (413), which the spec says must not be sent
/// again.
#[test]
fn opamp_servers_that_want_a_token_throttle_and_name_no_file() {
    let test = "opamp_servers_that_want_a_token_throttle_and_name_no_file";
    if !kernel_or_skip(test) || python_or_skip(test).is_none() {
        return;
    }
    let Setup {
        server,
        rules,
        receiver: _receiver,
        state,
        mut agent,
        ..
    } = setup("opamp-edges");
    // The server wants another token first: every request is refused (401), and the agent
    // backs off and says so; then the agent's, from `[opamp] headers`, is taken.
    server.require_header("Authorization", Some("Bearer 0ld"));
    // AcceptsStatus | OffersRemoteConfig: no effective config.
    server.capabilities(0x1 | 0x2);
    agent.write_config(&format!(
        "{}headers = {{ Authorization = \"Bearer t0k3n\" }}\n",
        config(state.path(), &server.endpoint())
    ));
    agent.start();
    wait_log(&agent, "401 Unauthorized");
    assert!(server.messages().is_empty());
    server.require_header("Authorization", Some("Bearer t0k3n"));
    let msgs = server.wait_for("a message with the token", WAIT_OPAMP, |m| m.len() >= 2);
    let with_token = msgs[0].t;
    // The first message is whole (the agent does not know the server yet); once the server
    // said what it takes, no effective config goes, even in a full report.
    assert!(msgs[0].effective_config.is_some(), "{:?}", msgs[0]);
    let n = server.messages().len();
    server.report_full_state();
    let msgs = server.wait_for("a full report", WAIT_OPAMP, |m| {
        m[n..].iter().any(|m| m.description.is_some())
    });
    let full = msgs[n..].iter().find(|m| m.description.is_some()).unwrap();
    assert!(
        full.health.is_some()
            && full.remote_config_status.is_some()
            && full.effective_config.is_none(),
        "{full:?}"
    );

    // One entry without a name: a rule file, `opamp/remote.toml`.
    let remote = RuleSpec::count("remote-unnamed");
    let h1 = server.set_config(&[("", &remote.to_toml())]);
    wait_status(&server, &h1, "APPLIED", "the unnamed entry");
    let (rules_now, _) = active(&agent);
    assert!(
        rules_now.contains(&(
            "remote-unnamed".to_string(),
            "opamp/remote.toml".to_string()
        )),
        "{rules_now:?}"
    );

    // Entries, none a rule file: FAILED, and the remote rule stays.
    let h2 = server.set_config(&[("collector.yaml", "receivers: {}\n")]);
    let failed = wait_status(&server, &h2, "FAILED", "the config without a rule file");
    let err = &failed.remote_config_status.as_ref().unwrap().error_message;
    assert!(
        err.contains("opamp/collector.yaml:1:1: the remote config has no rule file"),
        "{err}"
    );
    assert_eq!(names(&agent), vec!["local-count", "remote-unnamed"]);

    // UNAVAILABLE with retry_info: the agent waits as told between tries.
    let before = server.rejected().len();
    server.unavailable(2, Some(1_500_000_000));
    let t0 = Instant::now();
    while server.rejected().len() < before + 2 {
        assert!(t0.elapsed() < WAIT_OPAMP, "two UNAVAILABLE answers");
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = server.messages().len();
    server.wait_for("messages after UNAVAILABLE", WAIT_OPAMP, |m| m.len() > n);
    let rejected = server.rejected();
    let after = server.messages()[n].t;
    assert!(
        rejected[before + 1] - rejected[before] >= 1.4 && after - rejected[before + 1] >= 1.4,
        "retry_info's 1.5 s between tries: {:?}, then {after}",
        &rejected[before..]
    );
    assert!(
        agent
            .log()
            .contains("the server is unavailable: overloaded")
    );

    // 413 (a server's size limit): a message with the effective config goes again at once
    // without it, which is held back until it changes; one without is not sent again.
    server.max_body(2000);
    server.capabilities(0x1 | 0x2 | 0x4);
    server.wait_for("the effective config, now taken", WAIT_OPAMP, |m| {
        m.iter().any(|m| {
            m.effective_config
                .as_ref()
                .is_some_and(|e| e.contains_key("opamp/remote.toml"))
        })
    });
    let n = server.messages().len();
    rules.write(
        "60-big.toml",
        &format!(
            "{}# {}\n",
            RuleSpec::count("big-count").to_toml(),
            "x".repeat(4000)
        ),
    );
    wait_log(&agent, "held back until it changes");
    let msgs = server.wait_for(
        "the message without the effective config",
        WAIT_OPAMP,
        |m| {
            m[n..]
                .iter()
                .any(|m| m.health.is_some() || m.description.is_some())
        },
    );
    assert!(
        msgs[n..].iter().all(|m| m.effective_config.is_none()),
        "{:?}",
        &msgs[n..]
    );
    assert!(names(&agent).contains(&"big-count".to_string()));
    let n = server.messages().len();
    server.fail_with(1, None, 413);
    wait_log(&agent, "is not sent again");
    server.wait_for("a poll after the 413", WAIT_OPAMP, |m| m.len() > n);
    // Once it changes (and fits), it goes.
    server.max_body(1 << 20);
    rules.write("61-small.toml", &RuleSpec::count("small-count").to_toml());
    server.wait_for("the changed effective config", WAIT_OPAMP, |m| {
        m.iter().any(|m| {
            m.effective_config
                .as_ref()
                .is_some_and(|e| e.contains_key("61-small.toml"))
        })
    });
    // No 401 since the header was set.
    let refused: Vec<_> = server
        .received()
        .bad_requests
        .into_iter()
        .filter(|b| b["status"] == 401 && b["t"].as_f64().unwrap_or(0.0) > with_token)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
