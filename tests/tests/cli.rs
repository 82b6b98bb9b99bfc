//! The `dt-agent` binary: `check`, `run`, `stats --json`, SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dt_tests::otlp::{encode, sent_records};
use dt_tests::{
    HttpRequestBuilder, LogsRequestBuilder, RawClient, Rec, Receiver, RuleSpec, Split, TempRules,
    WAIT, agent_bin, assert_expected, assert_no_passthrough, evaluate, kernel_or_skip,
};

/// Runs `dt-agent args...` to completion (at most 30 s).
fn dt_agent(args: &[&str]) -> Output {
    let child = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dt-agent");
    wait_output(child, Duration::from_secs(30), args)
}

fn wait_output(mut child: Child, timeout: Duration, args: &[&str]) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "dt-agent {args:?} did not finish in {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `dt-agent run` on the rules in `rules`, hooking `port`, serving `socket`.
fn run_command(rules: &Path, port: u16, socket: &Path) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "run",
        "--rules",
        rules.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--socket",
        socket.to_str().unwrap(),
    ])
    .stdin(Stdio::null());
    cmd
}

/// Waits until the file at `log` holds `needle`.
fn wait_for_log(log: &Path, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not say {needle:?} within {timeout:?}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts exit 1 and a `file:line:column: message` line for `file` at `line` (and `column`
/// when given) whose message contains `needle`. Returns the column found.
fn assert_diag(o: &Output, file: &Path, line: usize, column: Option<usize>, needle: &str) -> usize {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit status; stderr:\n{err}");
    let prefix = format!("{}:{line}:", file.display());
    for l in err.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else {
            continue;
        };
        let Some((col, message)) = rest.split_once(": ") else {
            continue;
        };
        let Ok(col) = col.parse::<usize>() else {
            continue;
        };
        if !message.contains(needle) {
            continue;
        }
        if let Some(want) = column {
            assert_eq!(col, want, "column of {l:?}");
        }
        assert!(col >= 1);
        return col;
    }
    panic!("no `{prefix}<column>: ...{needle}...` line in stderr:\n{err}");
}

const VALID_A: &str = r#"# noise first
[[rule]]
name = "drop-debug-noise"
action = "drop"
[rule.match]
severity = "<INFO"

[[rule]]
name = "count-checkout"
action = "count"
[rule.match]
service = "checkout"
"#;

const VALID_B: &str = r#"[[rule]]
name = "drop-healthz"
action = "drop"
[rule.match]
body_contains = "healthcheck"
attributes = { "http.route" = "/healthz" }

[[rule]]
name = "count-warn-range"
action = "count"
[rule.match]
severity = "WARN..ERROR"
"#;

#[test]
fn cli_check_valid_files_exit_0() {
    let dir = TempRules::with_files(&[("10-a.toml", VALID_A), ("20-b.toml", VALID_B)]);
    let a = dir.file("10-a.toml");
    let b = dir.file("20-b.toml");
    let o = dt_agent(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    assert!(
        stderr(&o).lines().all(|l| !l.contains(".toml:")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cli_arguments_are_checked_before_the_agent_is_asked() {
    // No agent runs on this socket: each refusal comes from the argument itself.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let socket = socket.to_str().unwrap();
    // A state is on for 1s to 24h by hand too, as in a rule file.
    for d in ["48h", "500ms"] {
        let o = dt_agent(&["state", "incident", "on", "--for", d, "--socket", socket]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("--for {d}: a state is on for 1s to 24h")),
            "{}",
            stderr(&o)
        );
    }
    // `push DIR` pushes the directory's rule files; one without any says so.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = dt_agent(&["push", empty.to_str().unwrap(), "--socket", socket]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a directory with no rule file (*.toml) in it; nothing to push"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cli_check_reads_a_file_named_twice_once_and_says_an_empty_directory() {
    let dir = TempRules::with_files(&[("10-a.toml", VALID_A)]);
    let a = dir.file("10-a.toml");
    // The directory and one of its files: that file's rules are not duplicates of themselves.
    let o = dt_agent(&["check", dir.path().to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("in 1 file"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let empty = TempRules::new();
    let o = dt_agent(&["check", empty.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "stderr:\n{}", stderr(&o));
    assert!(stderr(&o).contains("holds no rule file"), "{}", stderr(&o));
}

#[test]
fn cli_check_unknown_key() {
    let dir = TempRules::new();
    let f = dir.write(
        "bad.toml",
        "[[rule]]\nname = \"a\"\naction = \"drop\"\n[rule.match]\nseverty = \"DEBUG\"\n",
    );
    let o = dt_agent(&["check", f.to_str().unwrap()]);
    assert_diag(&o, &f, 5, Some(1), "severty");
}

#[test]
fn cli_check_unknown_top_level_rule_key() {
    let dir = TempRules::new();
    let f = dir.write(
        "bad.toml",
        "[[rule]]\nname = \"a\"\naction = \"drop\"\n  colour = \"red\"\n",
    );
    let o = dt_agent(&["check", f.to_str().unwrap()]);
    assert_diag(&o, &f, 4, Some(3), "colour");
}

#[test]
fn cli_check_bad_severity() {
    let dir = TempRules::new();
    let f = dir.write(
        "sev.toml",
        "[[rule]]\nname = \"a\"\naction = \"drop\"\n[rule.match]\nseverity = \"LOUD\"\n",
    );
    let o = dt_agent(&["check", f.to_str().unwrap()]);
    // Points at the value.
    assert_diag(&o, &f, 5, Some(12), "");
}

#[test]
fn cli_check_duplicate_names_across_files() {
    let dir = TempRules::new();
    let a = dir.write(
        "10-a.toml",
        "[[rule]]\nname = \"dup\"\naction = \"count\"\n",
    );
    let b = dir.write(
        "20-b.toml",
        "[[rule]]\nname = \"other\"\naction = \"count\"\n\n[[rule]]\nname = \"dup\"\naction = \"drop\"\n",
    );
    let o = dt_agent(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    // The second definition, at its value.
    assert_diag(&o, &b, 6, Some(8), "dup");
}

#[test]
fn cli_check_bad_toml() {
    let dir = TempRules::new();
    let f = dir.write("syntax.toml", "[[rule]]\nname = \"a\"\naction = drop\n");
    let o = dt_agent(&["check", f.to_str().unwrap()]);
    // At the unquoted value.
    assert_diag(&o, &f, 3, Some(10), "");
}

#[test]
fn cli_check_reports_every_problem() {
    let dir = TempRules::new();
    let a = dir.write(
        "a.toml",
        "[[rule]]\nname = \"x\"\naction = \"explode\"\n\n[[rule]]\nname = \"y\"\naction = \"drop\"\n[rule.match]\nseverity = \"<=LOUD\"\n",
    );
    let b = dir.write(
        "b.toml",
        "[[rule]]\nname = \"z\"\naction = \"drop\"\nwat = 1\n",
    );
    let o = dt_agent(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_diag(&o, &a, 3, Some(10), "");
    assert_diag(&o, &a, 9, Some(12), "");
    assert_diag(&o, &b, 4, Some(1), "wat");
}

/// Waits until `dt-agent stats --json --socket S` answers (the agent is up), or the child exits.
fn wait_ready(child: &mut Child, socket: &Path) -> dt_agent::Stats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("dt-agent run exited early with {st}");
        }
        if socket.exists() {
            let o = dt_agent(&["stats", "--json", "--socket", socket.to_str().unwrap()]);
            if o.status.success() {
                return serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
                    panic!("stats --json: {e}: {}", String::from_utf8_lossy(&o.stdout))
                });
            }
        }
        assert!(Instant::now() < deadline, "dt-agent run did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cli_run_invalid_rules_exits_1_and_attaches_nothing() {
    if !kernel_or_skip("cli_run_invalid_rules_exits_1_and_attaches_nothing") {
        return;
    }
    let dir = TempRules::new();
    dir.write("10-ok.toml", VALID_A);
    let bad = dir.write(
        "20-bad.toml",
        "[[rule]]\nname = \"a\"\naction = \"drop\"\nbogus = 1\n",
    );
    let receiver = Receiver::start_v4();
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("agent.sock");
    let port = receiver.port().to_string();
    let o = dt_agent(&[
        "run",
        "--rules",
        dir.path().to_str().unwrap(),
        "--port",
        &port,
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_diag(&o, &bad, 4, Some(1), "bogus");
    assert!(!socket.exists(), "no control socket may be left behind");
    // Nothing attached: a request that the valid file would edit passes untouched.
    let mut b = LogsRequestBuilder::new().resource("svc").scope("s");
    for i in 0..5 {
        b = b.record(Rec::new(5, &format!("debug {i}")));
    }
    let req = HttpRequestBuilder::logs(encode(&b.build())).build();
    let mut c = RawClient::connect(receiver.addr());
    assert_eq!(c.roundtrip(&req, &Split::Whole).status, 200);
    c.finish();
    receiver.wait_for(1, WAIT);
    assert_eq!(receiver.connection_bytes()[0], req.bytes);
}

#[test]
fn cli_run_refuses_a_cgroup_that_is_not_one() {
    if !kernel_or_skip("cli_run_refuses_a_cgroup_that_is_not_one") {
        return;
    }
    let dir = TempRules::new();
    dir.write("10-ok.toml", VALID_A);
    let not_cgroup = tempfile::tempdir().unwrap();
    let socket = not_cgroup.path().join("agent.sock");
    let o = dt_agent(&[
        "run",
        "--rules",
        dir.path().to_str().unwrap(),
        "--port",
        "14399",
        "--socket",
        socket.to_str().unwrap(),
        "--cgroup",
        not_cgroup.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "{} is not a directory of the cgroup v2 hierarchy",
            not_cgroup.path().display()
        )),
        "{}",
        stderr(&o)
    );
    assert!(!socket.exists(), "no control socket may be left behind");
}

#[test]
fn cli_run_stats_json_and_sigterm() {
    if !kernel_or_skip("cli_run_stats_json_and_sigterm") {
        return;
    }
    let rules = vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
        RuleSpec::drop("drop-healthcheck").body_contains("healthcheck"),
    ];
    let dir = TempRules::from_rules(&rules);
    let receiver = Receiver::start_v4();
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("agent.sock");
    let log_path = sock_dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = run_command(dir.path(), receiver.port(), &socket)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn dt-agent run");
    let mut child = KillOnDrop(Some(child));
    let before = wait_ready(child.0.as_mut().unwrap(), &socket);
    assert_eq!(before.totals.requests, 0);

    let mut b = LogsRequestBuilder::new().resource("svc").scope("s");
    for i in 0..30 {
        let body = if i % 4 == 0 {
            format!("healthcheck {i}")
        } else {
            format!("work {i}")
        };
        b = b.record(Rec::new([5, 9, 13, 17, 2][i % 5], &body));
    }
    let logs = b.build();
    let req = HttpRequestBuilder::logs(encode(&logs)).build();
    let mut c = RawClient::connect(receiver.addr());
    for split in [Split::Whole, Split::head_then_body(3), Split::Whole] {
        assert_eq!(c.roundtrip(&req, &split).status, 200);
    }
    let sent = c.sent.len() as u64;
    c.finish();
    receiver.wait_for(3, WAIT);

    let o = dt_agent(&["stats", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(o.status.success(), "stats --json failed: {}", stderr(&o));
    let stats: dt_agent::Stats = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stats --json: {e}: {}", String::from_utf8_lossy(&o.stdout)));
    let mut expected = dt_tests::Expected::default();
    let one = evaluate(&rules, &sent_records(&logs));
    for _ in 0..3 {
        expected.merge(&one);
    }
    assert_same_records_in(&receiver, &expected.kept);
    assert_expected(&stats, &expected);
    assert_no_passthrough(&stats);
    assert_eq!(stats.totals.requests, 3);
    assert_eq!(stats.totals.bytes_in, sent);
    assert_eq!(stats.totals.bytes_out, receiver.total_bytes());
    assert!(stats.enabled);

    // The table form works too.
    let t = dt_agent(&["stats", "--socket", socket.to_str().unwrap()]);
    assert!(t.status.success(), "stats: {}", stderr(&t));
    assert!(String::from_utf8_lossy(&t.stdout).contains("drop-debug"));

    // A second `run` on the same socket is refused, and leaves this agent's socket alone.
    let second = run_command(dir.path(), receiver.port(), &socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a second dt-agent run");
    let second = wait_output(second, Duration::from_secs(20), &["run"]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another agent is already serving"),
        "{}",
        stderr(&second)
    );
    assert!(
        socket.exists(),
        "the refused run removed the agent's socket"
    );
    let o = dt_agent(&["stats", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "stats after the refused run: {}",
        stderr(&o)
    );

    // A second agent on another socket but the same port is warned that this one hooks it.
    let other_socket = sock_dir.path().join("other.sock");
    let other_log = sock_dir.path().join("other.log");
    let other = run_command(dir.path(), receiver.port(), &other_socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&other_log).unwrap())
        .spawn()
        .expect("spawn another dt-agent run");
    let other = KillOnDrop(Some(other));
    let want = format!(
        "port {} already hooked by another dt agent (pid {})",
        receiver.port(),
        child.0.as_ref().unwrap().id()
    );
    wait_for_log(&other_log, &want, Duration::from_secs(20));
    // SIGKILL: unpinned, its programs go with it.
    drop(other);

    // SIGHUP reads the rules directory again, and the agent goes on.
    let pid = child.0.as_ref().unwrap().id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_for_log(
        &log_path,
        "SIGHUP: reading the rules directory again",
        Duration::from_secs(10),
    );
    assert!(
        child.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "SIGHUP stopped the agent"
    );
    let o = dt_agent(&["stats", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(o.status.success(), "stats after SIGHUP: {}", stderr(&o));

    // A config file with problems (mid-edit) does not stop the verbs that only reach the agent:
    // its socket is used as written, and the rest is a warning.
    let edited = sock_dir.path().join("edited.toml");
    std::fs::write(
        &edited,
        format!(
            "socket = \"{}\"\nmax_request = 9999999\nnew_key = 1\n",
            socket.display()
        ),
    )
    .unwrap();
    for verb in [&["disable"][..], &["enable"], &["stats", "--json"]] {
        let mut args = verb.to_vec();
        args.extend(["--config", edited.to_str().unwrap()]);
        let o = dt_agent(&args);
        assert!(o.status.success(), "{verb:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("warning: the config file has problems")
                && stderr(&o).contains("edited.toml:2:15: `max_request`"),
            "{verb:?}: {}",
            stderr(&o)
        );
    }

    // SIGTERM: a clean exit 0.
    let mut child = child.0.take().unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dt-agent run did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM; output:\n{log}");
}

/// Kills (SIGKILL) and reaps the child if the test ends early.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn assert_same_records_in(receiver: &Receiver, kept: &[dt_tests::ReceivedRecord]) {
    assert!(receiver.decode_failures().is_empty());
    dt_tests::assert_same_records("cli run", kept, &receiver.records());
}

/// While `run` loads and checks its kernel programs (a second or more), its control socket
/// already answers: `stats` and the other verbs that only read or change the rule set are told
/// at once that the agent is starting (never left to time out as if it were hung), and a
/// `disable` is answered at once and carried out as it comes up. Under systemd
/// (`Type=notify`), `READY=1` comes once it filters, `STOPPING=1` when it stops.
#[test]
fn cli_run_answers_while_starting_and_tells_systemd_when_ready() {
    use dt_agent::control::{self, CallError, Request};
    use dt_tests::agent_process::AgentProcess;
    use std::os::unix::net::UnixDatagram;
    if !kernel_or_skip("cli_run_answers_while_starting_and_tells_systemd_when_ready") {
        return;
    }
    let rx = Receiver::start_v4();
    let rules = TempRules::from_rules(&[RuleSpec::count("count-all")]);
    let mut agent = AgentProcess::new("starting", rules.path(), &[rx.port()], false);
    let notify_path = agent.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    agent.set_env("NOTIFY_SOCKET", Some(notify_path.to_str().unwrap()));

    // Ask from the moment the socket is there, until the agent answers with its counters.
    let socket = agent.socket().to_path_buf();
    let asking = std::thread::spawn(move || {
        let (mut starting, mut disabled) = (Vec::new(), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no answer: {starting:?}");
            match control::call(&socket, &Request::Stats) {
                Ok(r) if r.stats.is_some() => return (starting, disabled),
                Ok(r) => panic!("an answer without stats: {r:?}"),
                Err(CallError::NoAgent(_)) => {}
                Err(CallError::Starting(m)) => {
                    assert!(m.contains("is starting"), "{m}");
                    starting.push(m);
                    if disabled.is_none() {
                        // The rip cord, pulled while it starts: answered at once, carried out
                        // as it comes up.
                        let r = control::call(&socket, &Request::Disable)
                            .unwrap_or_else(|e| panic!("disable while starting: {e}"));
                        disabled = r.note;
                    }
                }
                Err(e) => panic!("while the agent starts: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    agent.start();
    let (starting, disabled) = asking.join().unwrap();
    assert!(!starting.is_empty(), "the agent was never seen starting");
    println!(
        "{} answers while starting, the last: {}; disable: {disabled:?}",
        starting.len(),
        starting.last().unwrap()
    );
    let ready = |s: &str| {
        let mut buf = [0u8; 512];
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {s}: {e}"));
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.lines().any(|l| l == s), "{got:?}, not {s}");
    };
    let note = disabled.expect("a disable while starting");
    assert!(
        note.contains("is starting: the rip cord is pulled as it comes up"),
        "{note}"
    );
    ready("READY=1");
    // The disable asked for while it started: done as it came up.
    let s = agent.stats();
    assert!(
        !s.enabled,
        "the disable sent while starting was lost: {s:?}"
    );
    assert_eq!(s.disabled_cause.as_deref(), Some("disable"));
    agent.signal(libc::SIGTERM);
    ready("STOPPING=1");
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
}

/// The systemd unit of `dist/` is valid (`systemd-analyze verify`, with the built agent where
/// the unit expects it), and a `Type=notify` unit, as the agent tells systemd when it is ready.
#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        eprintln!("SKIPPED the_systemd_unit_verifies: no systemd-analyze on this machine");
        return;
    };
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/dt-agent.service"),
    )
    .unwrap();
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    assert!(unit.lines().any(|l| l == "NotifyAccess=main"), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dt-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/dt-agent",
            agent_bin().to_str().expect("a UTF-8 path"),
        ),
    )
    .unwrap();
    let o = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !text.contains("dt-agent.service"),
        "systemd-analyze verify says: {text}"
    );
}

/// An agent that adopts pins starts while the pinned filter goes on filtering: a `disable`
/// sent then is set on the pins at once (said so), and kept as the agent comes up, with the
/// new generation active (the cord and the rule set's flip write the same kernel value).
#[test]
fn cli_disable_while_an_adopting_agent_starts_acts_on_the_pins_at_once() {
    use dt_agent::control::{self, CallError, Request};
    use dt_tests::agent_process::AgentProcess;
    if !kernel_or_skip("cli_disable_while_an_adopting_agent_starts_acts_on_the_pins_at_once") {
        return;
    }
    let rx = Receiver::start_v4();
    let rules = TempRules::from_rules(&[RuleSpec::count("count-all")]);
    let mut agent = AgentProcess::new("starting-pinned", rules.path(), &[rx.port()], true);
    let first = agent.start();
    assert!(first.enabled);
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let pins = agent.pin_root().to_path_buf();
    assert!(dt_agent::agent::has_pins(&pins));

    let socket = agent.socket().to_path_buf();
    let asking = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "the agent was never seen starting"
            );
            match control::call(&socket, &Request::Stats) {
                Ok(_) => return None,
                Err(CallError::Starting(_)) => {
                    let r = control::call(&socket, &Request::Disable)
                        .unwrap_or_else(|e| panic!("disable while starting: {e}"));
                    // Pulled on the pins now: nothing filters from here on.
                    let pinned = dt_agent::agent::pinned_stats(&pins).unwrap();
                    return Some((r.note, pinned.enabled));
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let started = agent.start();
    let (note, pinned_enabled) = asking
        .join()
        .unwrap()
        .expect("the agent answered before it was seen starting");
    let note = note.expect("a note");
    assert!(
        note.contains("the rip cord is pulled on the pinned filter now, and as it comes up"),
        "{note}"
    );
    assert!(!pinned_enabled, "the pins were not disabled at once");
    let s = agent.stats();
    assert!(
        !s.enabled && s.disabled_cause.as_deref() == Some("disable"),
        "{s:?}"
    );
    assert_eq!(
        s.generation,
        first.generation + 1,
        "the new generation is active"
    );
    assert!(started.generation >= first.generation);
}
