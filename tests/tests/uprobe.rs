//! The uprobe hook in the real kernel: C programs that log through syslog(3) (or a function of
//! their own) and know nothing of dt, built here with gcc from `tests/c/`, counted and captured
//! at their calls.
//!
//! Every test runs its own in-process agent (or `dt-agent run`), and its programs have names of
//! their own: rules match them by `service`, which for a probe without a `service` is the
//! calling process's name, so calls of other processes on the machine never reach a test's
//! counters.
//!
//! Run: `cargo build -p dt-agent && cargo test -p dt-tests --test uprobe -- --nocapture` (root).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dt_agent::{Agent, AgentConfig, Stats};
use dt_tests::agent_process::{AgentProcess, bin, bpftool_json, dt_agent_cmd, output_text};
use dt_tests::*;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

const NO_SKIP: &str = "this kernel does not let a uprobe program skip a call \
                       (the verifier refuses writing registers)";

// ------------------------------------------------------------------------------------------
// Building and running the C programs

fn c_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(name)
}

/// Runs gcc; panics with its output on failure.
fn gcc(args: &[&str]) {
    let out = Command::new("gcc")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("gcc (installed by `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "gcc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tests/c/logcalls.c` built as `dir/name`: plain (its calls go to syslog and vsyslog) or with
/// `-O2 -D_FORTIFY_SOURCE=2` (to __syslog_chk and __vsyslog_chk), optionally linked against a
/// library of `lib_dir` first.
fn build_logcalls(dir: &Path, name: &str, fortify: bool, lib_dir: Option<&Path>) -> PathBuf {
    build_logcalls_with(dir, name, fortify, lib_dir, &[])
}

/// As [`build_logcalls`], with more gcc arguments (`-static`).
fn build_logcalls_with(
    dir: &Path,
    name: &str,
    fortify: bool,
    lib_dir: Option<&Path>,
    more: &[&str],
) -> PathBuf {
    let out = dir.join(name);
    let src = c_source("logcalls.c");
    let mut args: Vec<String> = vec!["-O2".into()];
    args.extend(more.iter().map(|a| a.to_string()));
    if fortify {
        args.push("-D_FORTIFY_SOURCE=2".into());
    } else {
        args.extend(["-U_FORTIFY_SOURCE".into(), "-D_FORTIFY_SOURCE=0".into()]);
    }
    args.extend([
        "-o".into(),
        out.display().to_string(),
        src.display().to_string(),
    ]);
    if let Some(lib) = lib_dir {
        args.extend([
            format!("-L{}", lib.display()),
            "-lfakelog".into(),
            format!("-Wl,-rpath,{}", lib.display()),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    gcc(&args);
    out
}

/// The undefined dynamic symbols of a binary (`nm -D --undefined-only`), without versions.
fn imports(bin: &Path) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(bin)
        .output()
        .expect("nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .collect()
}

/// A test program started with `args`: it prints "ready", waits for a line, works, prints
/// "done".
struct Logger {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Logger {
    fn start(bin: &Path, args: &[&str]) -> Logger {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut l = Logger {
            name: bin.display().to_string(),
            child,
            stdin,
            stdout,
        };
        l.expect_line("ready");
        l
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), want, "{}", self.name);
    }

    /// Lets it make its calls.
    fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        stdin.write_all(b"go\n").expect("write go");
    }

    /// Writes `text` and a newline to its stdin (which stays open).
    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .expect("write");
        stdin.flush().expect("flush");
    }

    /// Waits until it is done and has exited 0.
    fn finish(mut self) {
        self.expect_line("done");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{}: {status}", self.name);
    }
}

/// Runs a program to its end; its stdout.
fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------------------------------
// Agents and rules

/// An in-process agent on `rules`, hooking a port nobody uses, capturing to `capture`.
fn agent(rules: &TempRules, capture: Option<String>) -> (Agent, TcpListener) {
    agent_with(rules, capture, false)
}

/// As [`agent`], with `uprobe_fault_in` on.
fn agent_fault_in(rules: &TempRules, capture: Option<String>) -> (Agent, TcpListener) {
    agent_with(rules, capture, true)
}

fn agent_with(
    rules: &TempRules,
    capture: Option<String>,
    uprobe_fault_in: bool,
) -> (Agent, TcpListener) {
    let (hold, port) = reserve_port();
    let cfg = AgentConfig {
        capture_endpoint: capture,
        remote_rules: Vec::new(),
        memory_ceiling: None,
        captures_per_second: None,
        uprobe_fault_in,
        ..agent_config(rules, &[port])
    };
    (start_agent_with(cfg), hold)
}

fn reload(agent: &mut Agent, rules: &TempRules) -> u64 {
    agent
        .reload(rules.path())
        .unwrap_or_else(|e| panic!("reload: {e:#}"))
}

const SYSLOG_PROBE: &str = "[[probe]]\nname = \"syslog\"\npreset = \"syslog\"\n\n";

/// A rule on `hook` with an optional `[rule.match]` body.
fn rule(name: &str, action: &str, hook: &str, matches: &str) -> String {
    let mut r =
        format!("[[rule]]\nname = \"{name}\"\naction = \"{action}\"\nhooks = [\"{hook}\"]\n");
    if !matches.is_empty() {
        r.push_str("[rule.match]\n");
        r.push_str(matches);
        r.push('\n');
    }
    r.push('\n');
    r
}

/// A rules directory with one rule capturing every syslog call of `service`, named `name`.
fn capture_all(name: &str, service: &str) -> TempRules {
    let rules = TempRules::new();
    rules.write(
        "50-capture.toml",
        &format!(
            "{SYSLOG_PROBE}{}",
            rule(
                name,
                "capture",
                "uprobe:syslog",
                &format!("service = \"{service}\"")
            )
        ),
    );
    rules
}

/// What logcalls' plan makes per repetition, by rule suffix: (suffix, `[rule.match]` extra
/// line, matches per repetition). Every rule also matches `service` = the program's name.
const PLAN_RULES: [(&str, &str, u64); 12] = [
    ("all", "", 32),
    // EMERG, ALERT, CRIT → FATAL; ERR → ERROR; WARNING → WARN; NOTICE, INFO → INFO;
    // DEBUG → DEBUG. Four calls per priority.
    ("fatal", "severity = \"FATAL\"", 12),
    ("error", "severity = \"ERROR\"", 4),
    ("warn", "severity = \"WARN\"", 4),
    ("info", "severity = \"INFO\"", 8),
    ("debug", "severity = \"DEBUG\"", 4),
    ("error-up", "severity = \">=ERROR\"", 16),
    // A format string is the message...
    ("plain", "body_contains = \"plain message at priority\"", 8),
    ("priority", "body_contains = \"priority\"", 16),
    // ... as written: the formatted text ("priority 3") is not there.
    ("formatted", "body_contains = \"priority 3\"", 0),
    // "%s" is replaced by the string it prints, from the arguments or the va_list.
    ("timeout", "body_contains = \"timeout\"", 16),
    ("percent-s", "body_contains = \"%s\"", 0),
];

/// The plan's rules for a program named `service`, hooked to `hook`.
fn plan_rules(service: &str, hook: &str) -> String {
    PLAN_RULES
        .iter()
        .map(|(suffix, extra, _)| {
            let m = if extra.is_empty() {
                format!("service = \"{service}\"")
            } else {
                format!("service = \"{service}\"\n{extra}")
            };
            rule(&format!("{service}-{suffix}"), "count", hook, &m)
        })
        .collect()
}

/// Asserts every plan rule of `service` matched `runs` plan repetitions.
fn assert_plan_counts(stats: &Stats, service: &str, runs: u64) {
    let mut problems = Vec::new();
    for (suffix, _, per_rep) in PLAN_RULES {
        let name = format!("{service}-{suffix}");
        let got = stats.rule(&name).map(|r| r.matched);
        if got != Some(per_rep * runs) {
            problems.push(format!("{name}: matched {got:?}, want {}", per_rep * runs));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nstats: {:#?}",
        problems.join("\n"),
        stats.rules
    );
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        }
    })
}

fn body(r: &LogRecord) -> String {
    match r.body.as_ref().and_then(|b: &AnyValue| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("body is not a string: {other:?}"),
    }
}

/// (service.name, process.pid, record) of every record the receiver decoded.
fn received(receiver: &Receiver) -> Vec<(String, String, LogRecord)> {
    let mut out = Vec::new();
    for req in receiver.requests() {
        let Some(logs) = req.logs else {
            continue;
        };
        for rl in logs.resource_logs {
            let attrs = rl.resource.map(|r| r.attributes).unwrap_or_default();
            let service = string_attr(&attrs, "service.name").unwrap_or_default();
            let pid = string_attr(&attrs, "process.pid").unwrap_or_default();
            for sl in rl.scope_logs {
                assert_eq!(
                    sl.scope.as_ref().map(|s| s.name.as_str()),
                    Some("dt.uprobe")
                );
                for r in sl.log_records {
                    out.push((service.clone(), pid.clone(), r));
                }
            }
        }
    }
    out
}

/// Waits until the receiver has decoded `n` records.
fn wait_records(receiver: &Receiver, n: usize) -> Vec<(String, String, LogRecord)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = received(receiver);
        if got.len() >= n || Instant::now() > deadline {
            assert_eq!(got.len(), n, "records at the receiver");
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------
// Tests

/// glibc's syslog family with the preset: plain and fortified builds, at every priority, one
/// process started before the push and one after; every call counted once, per rule exactly.
#[test]
fn syslog_preset_counts_every_call_once_before_and_after_the_push() {
    if !kernel_or_skip("syslog_preset_counts_every_call_once_before_and_after_the_push") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = build_logcalls(dir.path(), "u1plain", false, None);
    let fort = build_logcalls(dir.path(), "u1fort", true, None);
    let (pi, fi) = (imports(&plain), imports(&fort));
    assert!(
        pi.contains(&"syslog".into()) && pi.contains(&"vsyslog".into()),
        "{pi:?}"
    );
    assert!(
        fi.contains(&"__syslog_chk".into()) && fi.contains(&"__vsyslog_chk".into()),
        "{fi:?}"
    );
    assert!(!fi.contains(&"syslog".into()) && !fi.contains(&"vsyslog".into()));

    let rules = TempRules::new();
    let (mut agent, _port) = agent(&rules, None);
    let reps = 3;
    let mut loggers = vec![
        Logger::start(&plain, &["plan", &reps.to_string()]),
        Logger::start(&fort, &["plan", &reps.to_string()]),
    ];
    // The rule set arrives while those two are running (they have libc mapped already).
    rules.write(
        "50-syslog.toml",
        &format!(
            "{SYSLOG_PROBE}{}{}",
            plan_rules("u1plain", "uprobe:syslog"),
            plan_rules("u1fort", "uprobe:syslog")
        ),
    );
    reload(&mut agent, &rules);
    loggers.push(Logger::start(&plain, &["plan", &reps.to_string()]));
    loggers.push(Logger::start(&fort, &["plan", &reps.to_string()]));
    for l in &mut loggers {
        l.go();
    }
    for l in loggers {
        l.finish();
    }
    let stats = stats_of(&agent);
    assert_plan_counts(&stats, "u1plain", 2 * reps);
    assert_plan_counts(&stats, "u1fort", 2 * reps);
    let r = stats.rule("u1fort-all").unwrap();
    assert_eq!(
        (r.hook.as_str(), r.action.as_str()),
        ("uprobe:syslog", "count")
    );
    assert_eq!(stats.uprobes.attached, 4, "{:?}", stats.uprobes);
    assert!(!stats.uprobes.drop_supported);
    println!(
        "syslog preset: {} functions attached; calls {} (all processes), nested {}",
        stats.uprobes.attached, stats.uprobes.calls, stats.uprobes.nested
    );
}

/// A statically linked program has its own copy of the syslog functions: the preset with
/// `binary` = its path counts its calls as it counts libc's.
#[test]
fn the_syslog_preset_on_a_statically_linked_program() {
    if !kernel_or_skip("the_syslog_preset_on_a_statically_linked_program") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_logcalls_with(dir.path(), "u1static", false, None, &["-static"]);
    assert!(imports(&bin).is_empty(), "static: {:?}", imports(&bin));
    let rules = TempRules::new();
    rules.write(
        "50-static.toml",
        &format!(
            "[[probe]]\nname = \"static\"\npreset = \"syslog\"\nbinary = \"{}\"\n\n{}",
            bin.display(),
            plan_rules("u1static", "uprobe:static")
        ),
    );
    let (agent, _port) = agent(&rules, None);
    let reps = 2;
    let mut l = Logger::start(&bin, &["plan", &reps.to_string()]);
    l.go();
    l.finish();
    let stats = stats_of(&agent);
    assert_plan_counts(&stats, "u1static", reps);
    assert_eq!(stats.uprobes.attached, 4, "{:?}", stats.uprobes);
}

/// A C library whose syslog functions call each other (nested calls and a tail call, as older
/// glibc versions did): each application call is still counted once, and the library's own
/// calls are counted as `nested`.
#[test]
fn nested_and_tail_calls_inside_the_library_are_not_counted_again() {
    if !kernel_or_skip("nested_and_tail_calls_inside_the_library_are_not_counted_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libfakelog.so");
    gcc(&[
        "-O2",
        "-shared",
        "-fPIC",
        "-o",
        lib.to_str().unwrap(),
        c_source("fakelog.c").to_str().unwrap(),
    ]);
    let plain = build_logcalls(dir.path(), "u2plain", false, Some(dir.path()));
    let fort = build_logcalls(dir.path(), "u2fort", true, Some(dir.path()));
    let rules = TempRules::new();
    rules.write(
        "50-fake.toml",
        &format!(
            "[[probe]]\nname = \"fake\"\npreset = \"syslog\"\nbinary = \"{}\"\n\n{}{}",
            lib.display(),
            plan_rules("u2plain", "uprobe:fake"),
            plan_rules("u2fort", "uprobe:fake")
        ),
    );
    let (agent, _port) = agent(&rules, None);
    let reps = 2;
    let mut loggers = vec![
        Logger::start(&plain, &["plan", &reps.to_string()]),
        Logger::start(&fort, &["plan", &reps.to_string()]),
    ];
    for l in &mut loggers {
        l.go();
    }
    for l in loggers {
        l.finish();
    }
    let stats = stats_of(&agent);
    assert_plan_counts(&stats, "u2plain", reps);
    assert_plan_counts(&stats, "u2fort", reps);
    // Only these two processes use the library. Plain: every call goes through the library's
    // __vsyslog_chk once more (32 per repetition: 24 nested calls, 8 tail calls); fortified:
    // __syslog_chk's 16 calls nest, the 16 __vsyslog_chk calls come from the program.
    let u = &stats.uprobes;
    assert_eq!(u.calls, 2 * 32 * reps, "{u:?}");
    assert_eq!(u.nested, (32 + 16) * reps, "{u:?}");
    assert_eq!(u.attached, 4);
}

/// `capture`: the matching calls arrive at an OTLP/HTTP receiver as log records, with their
/// message, severity, process and thread; messages at and over the bound.
#[test]
fn capture_exports_calls_as_otlp_log_records() {
    if !kernel_or_skip("capture_exports_calls_as_otlp_log_records") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fort = build_logcalls(dir.path(), "u3cap", true, None);
    let edge = build_logcalls(dir.path(), "u3edge", false, None);
    let receiver = Receiver::start_v4();
    let rules = TempRules::new();
    rules.write(
        "50-capture.toml",
        &format!(
            "{SYSLOG_PROBE}{}{}{}",
            rule("u3-all", "count", "uprobe:syslog", "service = \"u3cap\""),
            rule(
                "u3-capture",
                "capture",
                "uprobe:syslog",
                "service = \"u3cap\"\nseverity = \">=WARN\"\nbody_contains = \"timeout\""
            ),
            rule(
                "u3-edge",
                "capture",
                "uprobe:syslog",
                "service = \"u3edge\""
            ),
        ),
    );
    let (agent, _port) = agent(&rules, Some(receiver.logs_url()));
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut l = Logger::start(&fort, &["plan", "1"]);
    let pid = l.pid();
    l.go();
    l.finish();
    // Priorities 0-4 of the two "%s" calls: 10 records.
    let got = wait_records(&receiver, 10);
    let t1 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut by_body: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (service, rpid, r) in &got {
        assert_eq!(service, "u3cap");
        assert_eq!(rpid, &pid.to_string());
        assert!(
            r.time_unix_nano >= t0 - 1_000_000_000 && r.time_unix_nano <= t1,
            "time {} not within the run",
            r.time_unix_nano
        );
        assert!(r.observed_time_unix_nano >= r.time_unix_nano);
        let text = match r.severity_number {
            21 => "FATAL",
            17 => "ERROR",
            13 => "WARN",
            n => panic!("severity {n}"),
        };
        assert_eq!(r.severity_text, text);
        assert_eq!(
            string_attr(&r.attributes, "dt.probe").as_deref(),
            Some("syslog")
        );
        let f = string_attr(&r.attributes, "code.function.name").unwrap();
        assert!(f == "__syslog_chk" || f == "__vsyslog_chk", "{f}");
        assert_eq!(
            string_attr(&r.attributes, "thread.name").as_deref(),
            Some("u3cap")
        );
        assert_eq!(
            string_attr(&r.attributes, "thread.id").as_deref(),
            Some(pid.to_string().as_str())
        );
        by_body.entry(body(r)).or_default().push(r.severity_number);
    }
    let want: BTreeMap<String, Vec<i32>> = [
        (
            "percent-s: timeout talking to the database".to_string(),
            vec![21, 21, 21, 17, 13],
        ),
        (
            "va_list percent-s: timeout in a va_list".to_string(),
            vec![21, 21, 21, 17, 13],
        ),
    ]
    .into();
    assert_eq!(by_body, want);

    // Messages at the bound: 255 bytes whole, 300 bytes cut to 255 and flagged, and a "%s"
    // whose argument is NULL: the format itself.
    run(&edge, &["edge"]);
    let got = wait_records(&receiver, 13);
    let edge_records: Vec<&LogRecord> = got
        .iter()
        .filter(|(s, _, _)| s == "u3edge")
        .map(|(_, _, r)| r)
        .collect();
    assert_eq!(edge_records.len(), 3);
    assert_eq!(body(edge_records[0]), "a".repeat(255));
    assert_eq!(
        string_attr(&edge_records[0].attributes, "dt.message.truncated"),
        None
    );
    assert_eq!(body(edge_records[1]), "b".repeat(255));
    assert_eq!(
        string_attr(&edge_records[1].attributes, "dt.message.truncated").as_deref(),
        Some("true")
    );
    assert_eq!(body(edge_records[2]), "%s");

    // The exporter counts a post once the receiver has answered it.
    let deadline = Instant::now() + WAIT;
    while stats_of(&agent).uprobes.exported < 13 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = stats_of(&agent);
    let capture = stats.rule("u3-capture").unwrap();
    assert_eq!((capture.matched, capture.kept), (10, 10));
    assert_eq!(stats.rule("u3-all").unwrap().matched, 32);
    assert_eq!(stats.rule("u3-edge").unwrap().kept, 3);
    let u = &stats.uprobes;
    assert_eq!((u.captured, u.capture_lost), (13, 0), "{u:?}");
    assert_eq!((u.exported, u.export_failed), (13, 0), "{u:?}");
    assert!(u.truncated >= 1, "{u:?}");
    assert!(receiver.decode_failures().is_empty());
}

/// A `[[probe]]` named `own` on `cold_log(level, msg)` of the logcalls binary `bin`.
fn own_probe(bin: &Path) -> String {
    format!(
        "[[probe]]\nname = \"own\"\nbinary = \"{}\"\nsymbol = \"cold_log\"\nmessage_arg = 1\n\n",
        bin.display()
    )
}

/// The `own` probe, a rule capturing its calls (`u3-own`) and one counting those with
/// "timeout" in their message (`u3-own-timeout`).
fn own_rules(bin: &Path) -> String {
    format!(
        "{}{}{}",
        own_probe(bin),
        rule(
            "u3-own-timeout",
            "count",
            "uprobe:own",
            "body_contains = \"timeout\""
        ),
        rule("u3-own", "capture", "uprobe:own", ""),
    )
}

/// Whether an agent started with `uprobe_fault_in` (its first `stats`) faults pages in; if
/// not, prints the skip (a panic where kernel tests are required).
fn fault_in_or_skip(test: &str, stats: &Stats) -> bool {
    let found = if stats.uprobes.fault_in {
        Ok(())
    } else {
        Err("this kernel refuses a sleepable uprobe (6.0 on): no page can be faulted in".into())
    };
    needed_or_skip(test, found).is_some()
}

/// An agent process (not started yet) with `uprobe_fault_in` whose rule `rule_name` captures
/// every call of the `own` probe of logcalls, built as `name`; `config` ends its config file.
/// The directories and the reserved port live in `_keep`.
struct FaultInProcess {
    bin: PathBuf,
    receiver: Receiver,
    proc: AgentProcess,
    _keep: (tempfile::TempDir, TempRules, TcpListener),
}

fn fault_in_process(name: &str, rule_name: &str, config: &str) -> FaultInProcess {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_logcalls(dir.path(), name, false, None);
    let receiver = Receiver::start_v4();
    let rules = TempRules::new();
    rules.write(
        "50-stall.toml",
        &format!(
            "{}{}",
            own_probe(&bin),
            rule(rule_name, "capture", "uprobe:own", "")
        ),
    );
    let (hold, port) = reserve_port();
    let proc = AgentProcess::new(name, rules.path(), &[port], false);
    proc.write_config(&format!(
        "capture_endpoint = \"{}\"\nuprobe_fault_in = true\n{config}",
        receiver.logs_url()
    ));
    FaultInProcess {
        bin,
        receiver,
        proc,
        _keep: (dir, rules, hold),
    }
}

/// Runs logcalls (`bin`) in `mode` (`cold` or `cold-own`), its file next to it; the three
/// records it makes the receiver get, in order.
fn cold_calls(bin: &Path, mode: &str, receiver: &Receiver) -> Vec<LogRecord> {
    let file = bin.with_extension(mode);
    let before = received(receiver).len();
    run(bin, &[mode, &file.display().to_string()]);
    wait_records(receiver, before + 3)
        .into_iter()
        .skip(before)
        .map(|(_, _, r)| r)
        .collect()
}

const COLD_BODIES: [&str; 3] = [
    "cold format: timeout on a page never read",
    "cold argument: timeout on a page never read",
    "cold across: a message that starts on one page never read and ends on the next",
];

/// Messages on pages the program has never read (a literal in its executable before its first
/// use is the usual case) are faulted in and read whole: a format, a `"%s"` format and its
/// argument each on a page of its own, and a message across a page end whose both pages are
/// unread. They are captured as written, flagged neither unreadable nor truncated, and match
/// `body_contains`. First to a function of the program's own, which only this test's agent
/// probes (so the pages are certainly faulted in by it), then to syslog (whose `"%s"` is read
/// through; another test's agent may fault those pages in first).
#[test]
fn messages_on_pages_never_read_are_read() {
    const TEST: &str = "messages_on_pages_never_read_are_read";
    if !kernel_or_skip(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_logcalls(dir.path(), "u3cold", false, None);
    let receiver = Receiver::start_v4();
    let rules = TempRules::new();
    rules.write(
        "50-cold.toml",
        &format!(
            "{SYSLOG_PROBE}{}{}",
            own_rules(&bin),
            rule(
                "u3-cold",
                "capture",
                "uprobe:syslog",
                "service = \"u3cold\""
            ),
        ),
    );
    let (agent, _port) = agent_fault_in(&rules, Some(receiver.logs_url()));
    if !fault_in_or_skip(TEST, &stats_of(&agent)) {
        return;
    }
    for mode in ["cold-own", "cold"] {
        let got = cold_calls(&bin, mode, &receiver);
        let bodies: Vec<String> = got.iter().map(body).collect();
        assert_eq!(bodies, COLD_BODIES, "{mode}");
        for r in &got {
            assert_eq!(string_attr(&r.attributes, "dt.message.unreadable"), None);
            assert_eq!(string_attr(&r.attributes, "dt.message.truncated"), None);
        }
        if mode == "cold-own" {
            let stats = stats_of(&agent);
            // Its own pages: faulted in by this agent (the format's, the argument's, and the
            // two of the message across a page end).
            assert!(stats.uprobes.pages_faulted_in >= 4, "{:?}", stats.uprobes);
            assert_eq!(stats.rule("u3-own-timeout").unwrap().matched, 2);
        }
    }
    let stats = stats_of(&agent);
    assert_eq!(stats.rule("u3-own").unwrap().kept, 3);
    assert_eq!(stats.rule("u3-cold").unwrap().kept, 3);
}

/// A call that waits for its message's page (a userfaultfd page its program fills only when
/// the test says) while the rule set is replaced: after the wait the call is taken from the
/// start, so the new set's rule captures it and the removed rule does not count it; it is
/// counted once. Calls that another thread makes meanwhile on the waiting call's CPU are
/// evaluated (the waiting call gave the CPU's scratch back) and keep their own messages; none
/// is counted as preempted.
#[test]
fn a_call_that_waits_for_its_page_meets_the_rule_set_active_after_the_wait() {
    const TEST: &str = "a_call_that_waits_for_its_page_meets_the_rule_set_active_after_the_wait";
    if !kernel_or_skip(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = build_logcalls(dir.path(), "u3stall", false, None);
    let receiver = Receiver::start_v4();
    let set = |name: &str| {
        let rules = TempRules::new();
        rules.write(
            "50-stall.toml",
            &format!(
                "{}{}",
                own_probe(&bin),
                rule(name, "capture", "uprobe:own", "")
            ),
        );
        rules
    };
    let before = set("u3-before");
    let (mut agent, _port) = agent_fault_in(&before, Some(receiver.logs_url()));
    if !fault_in_or_skip(TEST, &stats_of(&agent)) {
        return;
    }
    const MEANWHILE: usize = 5;
    let mut l = Logger::start(&bin, &["stall", &MEANWHILE.to_string()]);
    l.say("go");
    // The probe is waiting for the page now.
    l.expect_line("fault");
    let after = set("u3-after");
    reload(&mut agent, &after);
    // The other thread's calls, on the same CPU, then the page.
    l.say("fill");
    l.finish();
    let got = wait_records(&receiver, MEANWHILE + 1);
    let mut bodies: Vec<String> = got.iter().map(|r| body(&r.2)).collect();
    bodies.sort();
    let mut want: Vec<String> = (0..MEANWHILE)
        .map(|i| format!("while stalled {i}"))
        .chain(["stalled: a message whose page came late".to_string()])
        .collect();
    want.sort();
    assert_eq!(bodies, want);
    let stats = stats_of(&agent);
    let n = MEANWHILE as u64 + 1;
    assert_eq!(stats.rule("u3-after").map(|r| r.matched), Some(n));
    assert_eq!(stats.rule("u3-before").map(|r| r.matched), Some(0));
    let u = &stats.uprobes;
    assert_eq!((u.calls, u.captured, u.preempted), (n, n, 0), "{u:?}");
    assert!(u.pages_faulted_in >= 1, "{u:?}");
}

/// A push that removes a probe while a call of it waits for its message's page: the kernel
/// detaches no uprobe until that wait ends, but the push returns (after the agent's bounded
/// wait, with a warning), `stats` answers meanwhile and says the function is still being
/// detached, its id stays reserved, and once the page comes the detach completes. The call
/// that waited meets the new set, which has no rule for it.
#[test]
fn a_probe_removed_while_a_call_waits_for_its_page_does_not_hold_the_agent() {
    const TEST: &str = "a_probe_removed_while_a_call_waits_for_its_page_does_not_hold_the_agent";
    if !kernel_or_skip(TEST) {
        return;
    }
    let FaultInProcess {
        bin,
        receiver,
        mut proc,
        _keep: keep,
    } = fault_in_process("u3detach", "u3-detach", "");
    if !fault_in_or_skip(TEST, &proc.start()) {
        return;
    }
    assert_eq!(proc.stats().uprobes.attached, 1);
    let mut l = Logger::start(&bin, &["stall"]);
    l.say("go");
    // The probe is waiting for the page now.
    l.expect_line("fault");
    // The same file without the probe.
    let new = keep.0.path().join("50-stall.toml");
    std::fs::write(&new, rule("u3-otlp", "count", "otlp", "")).unwrap();
    let t0 = Instant::now();
    let o = dt_agent_cmd(
        proc.verb_command("push", &[new.to_str().unwrap()]),
        Duration::from_secs(20),
        "push removing the probe",
    );
    let took = t0.elapsed();
    assert!(o.status.success(), "{}", output_text(&o));
    let u = proc.stats().uprobes;
    assert_eq!(
        (u.attached, u.detaching),
        (0, 1),
        "{u:?}; push took {took:?}"
    );
    proc.wait_log("goes on in the background", 1, Duration::from_secs(5));
    // The page comes: the call ends, and with it the detach.
    l.say("fill");
    l.finish();
    let t0 = Instant::now();
    loop {
        let u = proc.stats().uprobes;
        if u.detaching == 0 {
            // The waiting call was taken again under the new set: no rule, not counted.
            assert_eq!((u.calls, u.captured), (0, 0), "{u:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still detaching: {u:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(received(&receiver).is_empty());
    let o = proc.verb("uninstall", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
}

/// The time a call waits for its page is not dt's CPU: with a cost ceiling a 1 s window that
/// the wait alone would be twice over on this machine's CPUs, a call that waits 2.5 s for its
/// page (counted by the kernel in the program's run time, as checked) does not pull the rip
/// cord.
#[test]
fn waiting_for_a_page_is_not_counted_against_the_cost_ceiling() {
    const TEST: &str = "waiting_for_a_page_is_not_counted_against_the_cost_ceiling";
    if !kernel_or_skip(TEST) {
        return;
    }
    // 2.5 s of waiting in a 1 s window is 250% / CPUs of the machine: half of that.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    let ceiling = 125.0 / cpus;
    let FaultInProcess {
        bin,
        receiver,
        mut proc,
        _keep,
    } = fault_in_process(
        "u3ceil",
        "u3-ceil",
        &format!("[ceiling]\ncpu = \"{ceiling:.3}%\"\nwindow = \"1s\"\n"),
    );
    if !fault_in_or_skip(TEST, &proc.start()) {
        return;
    }
    let mut l = Logger::start(&bin, &["stall"]);
    l.say("go");
    l.expect_line("fault");
    std::thread::sleep(Duration::from_millis(2500));
    l.say("fill");
    l.finish();
    wait_records(&receiver, 1);
    // Two more windows, for the ceiling to have read the wait.
    std::thread::sleep(Duration::from_millis(2500));
    let stats = proc.stats();
    assert!(stats.enabled, "{:?}: {}", stats.disabled_reason, proc.log());
    assert_eq!(stats.rule("u3-ceil").map(|r| r.kept), Some(1));
    // The kernel did count the wait in the program's run time.
    let run_ns: u64 = proc
        .bpf_ids()
        .progs
        .iter()
        .map(|id| bpftool_json(&["prog", "show", "id", &id.to_string()]))
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("dt_uprobe"))
        })
        .filter_map(|p| p["run_time_ns"].as_u64())
        .sum();
    assert!(run_ns >= 2_400_000_000, "run time {run_ns} ns");
    assert!(stats.uprobes.pages_faulted_in >= 1, "{:?}", stats.uprobes);
}

/// Without `uprobe_fault_in` (the default; as on a kernel without sleepable uprobes): the same
/// messages, to a function of the program's own, are counted and captured, empty, flagged
/// `dt.message.unreadable` and counted as such; the log says why.
/// (Not syslog: the other tests' agents, run alongside, would fault the pages in first.)
#[test]
fn without_a_sleepable_uprobe_messages_on_pages_never_read_are_unreadable() {
    if !kernel_or_skip("without_a_sleepable_uprobe_messages_on_pages_never_read_are_unreadable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The probe's binary must exist when the rules are installed.
    let bin = build_logcalls(dir.path(), "u3own", false, None);
    let receiver = Receiver::start_v4();
    let rules = TempRules::new();
    rules.write("50-cold.toml", &own_rules(&bin));
    let (_hold, port) = reserve_port();
    let mut proc = AgentProcess::new("u3nosleep", rules.path(), &[port], false);
    proc.write_config(&format!("capture_endpoint = \"{}\"\n", receiver.logs_url()));
    let started = proc.start();
    assert!(!started.uprobes.fault_in, "{:?}", started.uprobes);
    assert!(
        proc.log().contains("unreadable (uprobe_fault_in is off)"),
        "{}",
        proc.log()
    );
    for r in cold_calls(&bin, "cold-own", &receiver) {
        assert_eq!(body(&r), "");
        assert_eq!(
            string_attr(&r.attributes, "dt.message.unreadable").as_deref(),
            Some("true")
        );
    }
    let stats = proc.stats();
    assert_eq!(stats.rule("u3-own").unwrap().kept, 3);
    assert_eq!(stats.rule("u3-own-timeout").unwrap().matched, 0);
    assert_eq!(stats.uprobes.unreadable, 3, "{:?}", stats.uprobes);
}

/// A collector that accepts connections and never answers: the exporter waits, the ring
/// buffer fills, and every call it cannot take is counted.
#[test]
fn a_full_capture_ring_buffer_is_counted() {
    if !kernel_or_skip("a_full_capture_ring_buffer_is_counted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let burst = build_logcalls(dir.path(), "u4burst", false, None);
    // Accepts and holds every connection, reading nothing and answering nothing.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/logs", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    let rules = capture_all("u4-capture", "u4burst");
    let (agent, _port) = agent(&rules, Some(url));
    let n = 20_000;
    run(&burst, &["burst", &n.to_string()]);
    let stats = stats_of(&agent);
    let r = stats.rule("u4-capture").unwrap();
    let u = &stats.uprobes;
    assert_eq!(r.matched, n);
    assert_eq!(r.kept, u.captured, "{u:?}");
    assert_eq!(r.kept + u.capture_lost, n, "{u:?}");
    assert!(u.capture_lost > 0, "{u:?}");
    println!(
        "capture ring buffer full: {} of {n} calls captured, {} counted as capture_lost",
        u.captured, u.capture_lost
    );
}

/// A function of the application's own, `log_write(level, msg)`, with a severity table, a
/// `service` of the probe's, and a probe limited to one process.
#[test]
fn a_custom_function_probe_with_a_severity_map_and_a_pid() {
    if !kernel_or_skip("a_custom_function_probe_with_a_severity_map_and_a_pid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("u5app");
    gcc(&[
        "-O2",
        "-o",
        app.to_str().unwrap(),
        c_source("applog.c").to_str().unwrap(),
    ]);
    let n = 100u64;
    let mut first = Logger::start(&app, &[&n.to_string()]);
    let mut second = Logger::start(&app, &[&n.to_string()]);
    let rules = TempRules::new();
    let probes = format!(
        "[[probe]]\nname = \"app\"\nbinary = \"{bin}\"\nsymbol = \"log_write\"\nseverity_arg = 0\n\
         severity_map = {{ 0 = \"DEBUG\", 1 = \"INFO\", 2 = \"WARN\", 3 = \"ERROR\" }}\n\
         message_arg = 1\nservice = \"payments\"\n\n\
         [[probe]]\nname = \"app-one\"\nbinary = \"{bin}\"\nsymbol = \"log_write\"\n\
         message_arg = 1\npid = {pid}\n\n",
        bin = app.display(),
        pid = first.pid()
    );
    rules.write(
        "50-app.toml",
        &format!(
            "{probes}{}{}{}{}{}{}{}",
            rule("u5-all", "count", "uprobe:app", ""),
            rule("u5-errors", "count", "uprobe:app", "severity = \"ERROR\""),
            rule("u5-warn-up", "count", "uprobe:app", "severity = \">=WARN\""),
            rule(
                "u5-timeouts",
                "count",
                "uprobe:app",
                "body_contains = \"timeout\""
            ),
            rule(
                "u5-payments",
                "count",
                "uprobe:app",
                "service = \"payments\""
            ),
            // The probe names its service: the process name is not it.
            rule("u5-by-comm", "count", "uprobe:app", "service = \"u5app\""),
            // No severity_arg: unspecified; no service: the process name.
            rule(
                "u5-one",
                "count",
                "uprobe:app-one",
                "service = \"u5app\"\nseverity = \"UNSPECIFIED\""
            ),
        ),
    );
    let (agent, _port) = agent(&rules, None);
    first.go();
    second.go();
    first.finish();
    second.finish();
    let stats = stats_of(&agent);
    let got: Vec<(&str, u64)> = [
        "u5-all",
        "u5-errors",
        "u5-warn-up",
        "u5-timeouts",
        "u5-payments",
        "u5-by-comm",
        "u5-one",
    ]
    .iter()
    .map(|name| (*name, stats.rule(name).map_or(u64::MAX, |r| r.matched)))
    .collect();
    assert_eq!(
        got,
        vec![
            ("u5-all", 2 * n),
            ("u5-errors", 2 * n / 4),
            ("u5-warn-up", 2 * n / 2),
            ("u5-timeouts", 2 * n / 4),
            ("u5-payments", 2 * n),
            ("u5-by-comm", 0),
            ("u5-one", n),
        ]
    );
    assert_eq!(stats.uprobes.attached, 2);
}

/// Probes come and go with the rule set: attached when a rule uses them, detached when none
/// does any more; counters of removed rules stay.
#[test]
fn probes_attach_and_detach_with_the_rule_set() {
    if !kernel_or_skip("probes_attach_and_detach_with_the_rule_set") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = build_logcalls(dir.path(), "u6plain", false, None);
    let rules = TempRules::new();
    let with_probe = format!(
        "{SYSLOG_PROBE}{}",
        rule("u6-all", "count", "uprobe:syslog", "service = \"u6plain\"")
    );
    rules.write("50-u6.toml", &with_probe);
    let (mut agent, _port) = agent(&rules, None);
    let go = |bin: &Path| {
        let mut l = Logger::start(bin, &["plan", "1"]);
        l.go();
        l.finish();
    };
    assert_eq!(stats_of(&agent).uprobes.attached, 4);
    go(&plain);
    assert_eq!(stats_of(&agent).rule("u6-all").unwrap().matched, 32);

    // The probe stays defined but no rule uses it: detached.
    rules.write("50-u6.toml", SYSLOG_PROBE);
    let g = reload(&mut agent, &rules);
    let s = stats_of(&agent);
    assert_eq!((s.generation, s.uprobes.attached), (g, 0));
    go(&plain);
    let s = stats_of(&agent);
    let r = s.rule("u6-all").unwrap();
    assert_eq!((r.matched, r.active), (32, false));

    rules.write("50-u6.toml", &with_probe);
    reload(&mut agent, &rules);
    assert_eq!(stats_of(&agent).uprobes.attached, 4);
    go(&plain);
    assert_eq!(stats_of(&agent).rule("u6-all").unwrap().matched, 64);

    // A rule set change that keeps the probe keeps its attachments (counting goes on).
    rules.write(
        "60-more.toml",
        &rule(
            "u6-errors",
            "count",
            "uprobe:syslog",
            "severity = \">=ERROR\"\nservice = \"u6plain\"",
        ),
    );
    reload(&mut agent, &rules);
    go(&plain);
    let s = stats_of(&agent);
    assert_eq!(s.rule("u6-all").unwrap().matched, 96);
    assert_eq!(s.rule("u6-errors").unwrap().matched, 16);
    assert_eq!(s.uprobes.attached, 4);
}

/// A probe that cannot be attached refuses the whole rule set, naming the probe and where it
/// is written; the active set stays.
#[test]
fn a_missing_symbol_or_binary_refuses_the_rule_set() {
    if !kernel_or_skip("a_missing_symbol_or_binary_refuses_the_rule_set") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = build_logcalls(dir.path(), "u7plain", false, None);
    let rules = TempRules::new();
    rules.write(
        "50-ok.toml",
        &format!(
            "{SYSLOG_PROBE}{}",
            rule("u7-all", "count", "uprobe:syslog", "service = \"u7plain\"")
        ),
    );
    let (mut agent, _port) = agent(&rules, None);
    let before = stats_of(&agent);

    let file = rules.write(
        "60-bad.toml",
        &format!(
            "[[probe]]\nname = \"app\"\nbinary = \"{}\"\nsymbol = \"no_such_function\"\nmessage_arg = 1\n\n{}",
            plain.display(),
            rule("u7-app", "count", "uprobe:app", "")
        ),
    );
    let e = format!("{:#}", agent.reload(rules.path()).unwrap_err());
    assert_eq!(
        e,
        format!(
            "{}:4:10: probe \"app\": no function \"no_such_function\" in {} (neither in its \
             dynamic nor its static symbol table)",
            file.display(),
            plain.display()
        )
    );
    rules.write(
        "60-bad.toml",
        &format!(
            "[[probe]]\nname = \"app\"\nbinary = \"/no/such/binary\"\nsymbol = \"f\"\nmessage_arg = 1\n\n{}",
            rule("u7-app", "count", "uprobe:app", "")
        ),
    );
    let e = format!("{:#}", agent.reload(rules.path()).unwrap_err());
    assert!(
        e.starts_with(&format!(
            "{}:3:10: probe \"app\": binary /no/such/binary: ",
            file.display()
        )),
        "{e}"
    );
    rules.write(
        "60-bad.toml",
        &format!(
            "[[probe]]\nname = \"lib\"\nbinary = \"libno-such-lib\"\nsymbol = \"f\"\nmessage_arg = 1\n\n{}",
            rule("u7-app", "count", "uprobe:lib", "")
        ),
    );
    let e = format!("{:#}", agent.reload(rules.path()).unwrap_err());
    assert!(
        e.starts_with(&format!(
            "{}:3:10: probe \"lib\": no library \"libno-such-lib\" in the ld.so cache",
            file.display()
        )),
        "{e}"
    );
    let after = stats_of(&agent);
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.uprobes.attached, 4);
    assert!(after.rule("u7-app").is_none());

    // At start, too: nothing is attached.
    let bad = TempRules::new();
    bad.write(
        "60-bad.toml",
        &format!(
            "[[probe]]\nname = \"app\"\nbinary = \"{}\"\nsymbol = \"no_such_function\"\nmessage_arg = 1\n\n{}",
            plain.display(),
            rule("u7-app", "count", "uprobe:app", "")
        ),
    );
    let (_hold, port) = reserve_port();
    let e = match Agent::start(agent_config(&bad, &[port])) {
        Ok(_) => panic!("the agent started with a probe that cannot attach"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("probe \"app\": no function \"no_such_function\""),
        "{e}"
    );
}

/// The start-up check: a uprobe program that writes registers does not load on this kernel.
#[test]
fn drop_support_is_detected_as_unsupported_on_this_kernel() {
    if !kernel_or_skip("drop_support_is_detected_as_unsupported_on_this_kernel") {
        return;
    }
    let rules = TempRules::new();
    let (agent, _port) = agent(&rules, None);
    let support = agent.uprobe_drop_support();
    assert!(!support.supported, "{support:?}");
    assert!(
        support.detail.contains("invalid bpf_context access"),
        "{support:?}"
    );
    assert!(!stats_of(&agent).uprobes.drop_supported);
}

/// `drop` on a uprobe hook is refused with the kernel's reason, never made a count: by `run`
/// at start, by `push`, and by a reload; `capture` without a capture endpoint likewise.
#[test]
fn drop_on_a_uprobe_hook_is_refused_with_the_reason() {
    if !kernel_or_skip("drop_on_a_uprobe_hook_is_refused_with_the_reason") {
        return;
    }
    let drop_rules = format!(
        "{SYSLOG_PROBE}{}",
        rule("u8-drop", "drop", "uprobe:syslog", "severity = \"DEBUG\"")
    );
    let refusal = |file: &Path| {
        format!(
            "{}:7:10: rule \"u8-drop\": drop on hook \"uprobe:syslog\" is refused: {NO_SKIP}",
            file.display()
        )
    };

    // In process: start and reload.
    let rules = TempRules::new();
    let file = rules.write("50-drop.toml", &drop_rules);
    let (_hold, port) = reserve_port();
    let e = match Agent::start(agent_config(&rules, &[port])) {
        Ok(_) => panic!("started with a drop rule on a uprobe hook"),
        Err(e) => format!("{e:#}"),
    };
    assert_eq!(e, refusal(&file));
    let empty = TempRules::new();
    let (mut agent, _port) = agent(&empty, None);
    let file = empty.write("50-drop.toml", &drop_rules);
    let e = format!("{:#}", agent.reload(empty.path()).unwrap_err());
    assert_eq!(e, refusal(&file));
    // Capture with nowhere to send to.
    let file = empty.write(
        "50-drop.toml",
        &format!(
            "{SYSLOG_PROBE}{}",
            rule("u8-cap", "capture", "uprobe:syslog", "")
        ),
    );
    let e = format!("{:#}", agent.reload(empty.path()).unwrap_err());
    assert!(
        e.starts_with(&format!(
            "{}:7:10: rule \"u8-cap\": capture on hook \"uprobe:syslog\" needs somewhere to send",
            file.display()
        )),
        "{e}"
    );
    assert_eq!(stats_of(&agent).uprobes.attached, 0);

    // `dt-agent run` refuses to start.
    let run_dir = TempRules::new();
    let run_file = run_dir.write("50-drop.toml", &drop_rules);
    let sock_dir = tempfile::tempdir().unwrap();
    let config = sock_dir.path().join("agent.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--rules"])
        .arg(run_dir.path())
        .arg("--socket")
        .arg(sock_dir.path().join("a.sock"))
        .arg("--config")
        .arg(&config)
        .args(["--no-pin", "--port", &port.to_string()]);
    let out = dt_agent_cmd(cmd, Duration::from_secs(30), "dt-agent run");
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&refusal(&run_file)),
        "{}",
        output_text(&out)
    );

    // `dt-agent push` refuses the file and writes nothing.
    let live = TempRules::new();
    let mut proc = AgentProcess::new("u8push", live.path(), &[port], false);
    let before = proc.start();
    let pushed_dir = tempfile::tempdir().unwrap();
    let pushed = pushed_dir.path().join("50-drop.toml");
    std::fs::write(&pushed, &drop_rules).unwrap();
    let out = proc.push(&[&pushed]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&refusal(&pushed)), "{}", output_text(&out));
    assert!(!live.file("50-drop.toml").exists());
    assert_eq!(proc.stats().generation, before.generation);
}

/// What a counted uprobe costs per call: the same program, the same filtered syslog calls, once
/// unprobed and once with a count rule on its calls. Printed, not asserted.
#[test]
fn per_call_overhead_of_a_counted_uprobe() {
    if !kernel_or_skip("per_call_overhead_of_a_counted_uprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bench = build_logcalls(dir.path(), "u9bench", false, None);
    let n = 500_000u64;
    let ns = |out: String| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix("ns_per_call "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ns_per_call in {out:?}"))
    };
    let unprobed = ns(run(&bench, &["bench", &n.to_string()]));
    let rules = TempRules::new();
    rules.write(
        "50-bench.toml",
        &format!(
            "{SYSLOG_PROBE}{}",
            rule(
                "u9-count",
                "count",
                "uprobe:syslog",
                "service = \"u9bench\""
            )
        ),
    );
    let (agent, _port) = agent(&rules, None);
    let probed = ns(run(&bench, &["bench", &n.to_string()]));
    let matched = stats_of(&agent).rule("u9-count").unwrap().matched;
    // The warm-up calls count too.
    assert_eq!(matched, n + n / 10);
    println!(
        "uprobe overhead: syslog() filtered by the log mask: {unprobed:.0} ns/call unprobed, \
         {probed:.0} ns/call with a counting uprobe: +{:.0} ns per call ({n} calls)",
        probed - unprobed
    );
}

/// A trigger on a uprobe hook: a daemon's `syslog(LOG_ERR)` turns a state on that raises the
/// verbosity of OTLP logs, and flushes the recorder of what was dropped before.
#[test]
fn a_syslog_error_fires_a_trigger_that_raises_otlp_verbosity_and_flushes() {
    if !kernel_or_skip("a_syslog_error_fires_a_trigger_that_raises_otlp_verbosity_and_flushes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = build_logcalls(dir.path(), "u7trig", false, None);
    let receiver = Receiver::start_v4();
    let rules = TempRules::new();
    rules.write(
        "50-trigger.toml",
        &format!(
            "{SYSLOG_PROBE}\
             [[recorder]]\nname = \"debug\"\nsize = \"64KiB\"\n\n\
             [[state]]\nname = \"verbose\"\nduration = \"1h\"\n\n\
             [[rule]]\nname = \"daemon-error\"\naction = \"trigger\"\nhooks = [\"uprobe:syslog\"]\n\
             set_state = [\"verbose\"]\nflush = [\"debug\"]\n\
             [rule.match]\nservice = \"u7trig\"\nseverity = \">=ERROR\"\n\n\
             [[rule]]\nname = \"drop-debug\"\naction = \"drop\"\nrecorder = \"debug\"\n\
             [rule.match]\nseverity = \"DEBUG\"\nstate = \"!verbose\"\n"
        ),
    );
    let cfg = AgentConfig {
        capture_endpoint: Some(receiver.logs_url()),
        remote_rules: Vec::new(),
        memory_ceiling: None,
        captures_per_second: None,
        ..agent_config(&rules, &[receiver.port()])
    };
    let agent = start_agent_with(cfg);
    let send_debug = |body: &str| {
        let req = LogsRequestBuilder::new()
            .resource("app")
            .scope("s")
            .record(Rec::new(5, body))
            .build();
        let mut c = RawClient::connect(receiver.addr());
        let resp = c.roundtrip(&http::post_logs(otlp::encode(&req)), &Split::Whole);
        assert_eq!(resp.status, 200);
    };
    send_debug("calm debug");
    assert_eq!(stats_of(&agent).rule("drop-debug").unwrap().dropped, 1);
    // One syslog(LOG_ERR) of the daemon.
    run(&daemon, &["burst", "1"]);
    let s = stats_of(&agent);
    assert_eq!(s.rule("daemon-error").unwrap().fired, Some(1));
    assert!(s.states[0].on);
    // The flush (after the calm request, which arrived with its record dropped), then DEBUG
    // records reach the collector.
    let got = receiver.wait_for(2, WAIT);
    assert!(got[0].records().is_empty());
    let flushed = got[1].records();
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].body.as_deref(), Some("calm debug"));
    assert_eq!(flushed[0].scope, "dt.recorder.debug");
    send_debug("verbose debug");
    let got = receiver.wait_for(3, WAIT);
    assert_eq!(got[2].records()[0].body.as_deref(), Some("verbose debug"));
    assert_eq!(stats_of(&agent).rule("drop-debug").unwrap().dropped, 1);
}

/// `[ceiling] captures_per_second`: a burst of captured calls is exported up to the ceiling
/// each second; the rest are counted `capture_throttled`, never queued (the exporter's memory
/// stays bounded), and everything adds up.
#[test]
fn captures_over_the_egress_ceiling_are_counted_not_exported() {
    if !kernel_or_skip("captures_over_the_egress_ceiling_are_counted_not_exported") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let burst = build_logcalls(dir.path(), "u9burst", false, None);
    let receiver = Receiver::start_v4();
    let rules = capture_all("u9-capture", "u9burst");
    let (hold, port) = reserve_port();
    let cfg = AgentConfig {
        capture_endpoint: Some(receiver.logs_url()),
        captures_per_second: Some(100),
        ..agent_config(&rules, &[port])
    };
    let agent = start_agent_with(cfg);
    drop(hold);
    let n = 2000;
    let t0 = Instant::now();
    run(&burst, &["burst", &n.to_string()]);
    // Everything read from the ring buffer is either exported or throttled.
    let deadline = Instant::now() + WAIT;
    let u = loop {
        let u = stats_of(&agent).uprobes;
        if u.exported + u.export_failed + u.capture_throttled >= u.captured {
            break u;
        }
        assert!(Instant::now() < deadline, "{u:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = t0.elapsed().as_secs() + 1;
    assert_eq!(u.captured + u.capture_lost, n, "{u:?}");
    assert_eq!(u.export_failed, 0, "{u:?}");
    assert!(u.capture_throttled > 0, "{u:?}");
    assert!(
        u.exported <= 100 * seconds,
        "at most the ceiling a second: {u:?} over {seconds} s"
    );
    assert_eq!(u.exported + u.capture_throttled, u.captured, "{u:?}");
    assert_eq!(
        wait_records(&receiver, u.exported as usize).len() as u64,
        u.exported
    );
}

/// The capture endpoint down (nothing listens): every post fails fast, the calls in it are
/// counted `export_failed`, nothing piles up, and the hook goes on counting.
#[test]
fn captures_to_an_endpoint_that_is_down_are_counted_as_failed() {
    if !kernel_or_skip("captures_to_an_endpoint_that_is_down_are_counted_as_failed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let burst = build_logcalls(dir.path(), "u10down", false, None);
    let (closed, closed_port) = reserve_port();
    drop(closed);
    let rules = capture_all("u10-capture", "u10down");
    let (agent, _port) = agent(
        &rules,
        Some(format!("http://127.0.0.1:{closed_port}/v1/logs")),
    );
    let n = 3000;
    run(&burst, &["burst", &n.to_string()]);
    let deadline = Instant::now() + WAIT;
    let u = loop {
        let u = stats_of(&agent).uprobes;
        if u.export_failed + u.exported >= u.captured {
            break u;
        }
        assert!(Instant::now() < deadline, "{u:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(u.captured + u.capture_lost, n, "{u:?}");
    assert_eq!((u.exported, u.export_failed), (0, u.captured), "{u:?}");
    assert_eq!(stats_of(&agent).rule("u10-capture").unwrap().matched, n);
}
