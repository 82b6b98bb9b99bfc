//! The operator's view, against the real kernel: `dt-agent run` as a process, driven by the
//! other verbs exactly as a user would (push, rules, stats, disable/enable, uninstall), with
//! signals and crashes (SIGTERM, kill -9), pinned state, hot reload of the rules directory, and
//! a non-root peer on the control socket.
//!
//! Every test has its own receiver port, control socket, pin root and rules directory, so they
//! run in parallel. Records carry bodies of three kinds: `xa-...` (contains "a-"), `xb-...`
//! ("b-") and `xc-...` (neither), so that rules `drop-a` / `drop-b` / `drop-c` give verdicts
//! that are easy to tell apart.
//!
//! Run: `cargo build -p dt-agent && cargo test -p dt-tests --test operator -- --nocapture`
//! (as root).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dt_agent::Stats;
use dt_agent::control::RulesInfo;
use dt_tests::agent_process::{
    AgentProcess, cgroup_sock_ops, dt_agent_cmd, loaded_maps, loaded_progs, output_text,
    pinned_link,
};
use dt_tests::model::rules_toml;
use dt_tests::otlp::{encode, filler, sent_records};
use dt_tests::record::SentRecord;
use dt_tests::*;

// ------------------------------------------------------------------------------------------
// Requests and rules

/// A request with `per_kind` records of each kind, interleaved a, b, c; bodies
/// `x<kind>-r<id>-<i> <padding>`.
struct AbcRequest {
    http: HttpRequest,
    sent: Vec<SentRecord>,
}

fn abc_request(id: usize, per_kind: usize, pad: usize) -> AbcRequest {
    let mut b = LogsRequestBuilder::new().resource("svc").scope("ops");
    for i in 0..per_kind {
        for kind in ["a", "b", "c"] {
            let body = format!("x{kind}-r{id}-{i} {}", filler(id * 1000 + i, pad));
            b = b.record(Rec::new(9, &body).attr("kind", kind));
        }
    }
    let logs = b.build();
    let sent = sent_records(&logs);
    let http = HttpRequestBuilder::logs(encode(&logs)).build();
    AbcRequest { http, sent }
}

fn drop_kind(kind: &str) -> RuleSpec {
    RuleSpec::drop(&format!("drop-{kind}")).body_contains(&format!("{kind}-"))
}

fn count_all() -> RuleSpec {
    RuleSpec::count("count-all")
}

/// The 50-test.toml text of `rules`.
fn toml(rules: &[RuleSpec]) -> String {
    rules_toml(rules)
}

/// `dt-agent push` prints `pushed N file(s): generation G` (then, for a push that changed
/// nothing, `(unchanged: ...)`).
fn pushed_generation(o: &std::process::Output) -> u64 {
    let out = String::from_utf8_lossy(&o.stdout);
    out.lines()
        .find_map(|l| {
            l.rsplit_once("generation ")
                .and_then(|(_, g)| g.split_whitespace().next())
                .map(|g| g.parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no `generation N` in push's output:\n{}", output_text(o)))
}

// ------------------------------------------------------------------------------------------
// Traffic and checks

/// Sends `req` alone on a new connection as `split`, checks the 200, and returns what the
/// receiver got for it.
fn send_one(rx: &Receiver, req: &HttpRequest, split: &Split) -> Received {
    let before = rx.requests().len();
    let mut c = RawClient::connect(rx.addr());
    let resp = c.roundtrip(req, split);
    assert_eq!(resp.status, 200, "response {resp:?}");
    c.finish();
    let all = rx.wait_for(before + 1, WAIT);
    assert_eq!(all.len(), before + 1, "one request, one arrival");
    all[before].clone()
}

/// The request arrived decoded, holding exactly the records `rules` keep, in order.
fn assert_filtered(what: &str, r: &Received, rules: &[RuleSpec], req: &AbcRequest) {
    assert!(
        r.decode_error.is_none(),
        "{what}: the receiver could not decode: {:?}",
        r.decode_error
    );
    let want = evaluate(rules, &req.sent);
    assert!(
        want.records_dropped > 0,
        "{what}: the test needs a request the rules change"
    );
    let got = r.records();
    assert_eq!(
        got.len(),
        want.kept.len(),
        "{what}: kept records (rules {:?})",
        rules.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    assert!(got == want.kept, "{what}: records differ from the model");
}

/// The request arrived byte for byte as sent, on a connection of its own.
fn assert_untouched(what: &str, rx: &Receiver, r: &Received, req: &AbcRequest) {
    assert!(r.decode_error.is_none(), "{what}: {:?}", r.decode_error);
    assert!(r.body == req.http.payload, "{what}: the body was edited");
    assert_eq!(
        rx.connection_bytes()[r.conn as usize],
        req.http.bytes,
        "{what}: the connection's bytes differ from what was sent"
    );
}

/// Every counter of `stats --json` under one flat name.
fn flat(s: &Stats) -> BTreeMap<String, u64> {
    let t = &s.totals;
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("connections", t.connections),
        ("requests", t.requests),
        ("log_requests", t.log_requests),
        ("records", t.records),
        ("records_dropped", t.records_dropped),
        ("bytes_in", t.bytes_in),
        ("bytes_out", t.bytes_out),
        ("edit_failures", t.edit_failures),
        ("untracked_bytes", t.untracked_bytes),
        ("in_flight", t.in_flight),
    ] {
        m.insert(format!("totals.{k}"), v);
    }
    for (k, v) in &t.passthrough {
        m.insert(format!("passthrough.{k}"), *v);
    }
    for r in &s.rules {
        for (k, v) in [
            ("matched", r.matched),
            ("kept", r.kept),
            ("dropped", r.dropped),
            ("dropped_bytes", r.dropped_bytes),
            ("redacted", r.redacted),
        ] {
            m.insert(format!("{}.{k}", r.name), v);
        }
    }
    m
}

/// What the counters must move by.
#[derive(Default, Debug)]
struct Want(BTreeMap<String, i64>);

impl Want {
    fn add(&mut self, k: &str, v: i64) -> &mut Self {
        *self.0.entry(k.to_string()).or_default() += v;
        self
    }

    /// One connection carrying `req`, walked with `rules`; `bytes_out` is what the receiver read.
    fn filtered(&mut self, rules: &[RuleSpec], req: &AbcRequest, bytes_out: usize) -> &mut Self {
        let e = evaluate(rules, &req.sent);
        self.add("totals.connections", 1)
            .add("totals.requests", 1)
            .add("totals.log_requests", 1)
            .add("totals.records", e.records as i64)
            .add("totals.records_dropped", e.records_dropped as i64)
            .add("totals.bytes_in", req.http.len() as i64)
            .add("totals.bytes_out", bytes_out as i64);
        for r in &e.rules {
            self.add(&format!("{}.matched", r.name), r.matched as i64)
                .add(&format!("{}.dropped", r.name), r.dropped as i64)
                .add(&format!("{}.dropped_bytes", r.name), r.dropped_bytes as i64);
        }
        self
    }

    /// One connection carrying `req`, passed through untouched for `reason`.
    fn passed(&mut self, reason: &str, req: &AbcRequest) -> &mut Self {
        self.add("totals.connections", 1)
            .add("totals.requests", 1)
            .add(&format!("passthrough.{reason}"), 1)
            .add("totals.bytes_in", req.http.len() as i64)
            .add("totals.bytes_out", req.http.len() as i64)
    }
}

/// `after - before` equals `want` exactly, counter by counter (every other counter unmoved).
fn assert_delta(what: &str, before: &Stats, after: &Stats, want: &Want) {
    let (a, b) = (flat(before), flat(after));
    let mut got = BTreeMap::new();
    for k in a.keys().chain(b.keys()) {
        let d = *b.get(k).unwrap_or(&0) as i64 - *a.get(k).unwrap_or(&0) as i64;
        if d != 0 {
            got.insert(k.clone(), d);
        }
    }
    let want: BTreeMap<String, i64> = want
        .0
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(
        got, want,
        "{what}: counter deltas (got left, want right)\nbefore {before:#?}\nafter {after:#?}"
    );
}

/// Polls `rules --json` until the generation reaches `want` (never past it), at most `timeout`.
fn wait_generation(agent: &AgentProcess, want: u64, timeout: Duration) -> (RulesInfo, Duration) {
    let t0 = Instant::now();
    loop {
        let info = agent.rules();
        assert!(
            info.generation <= want,
            "generation {} overshot {want}: {info:#?}\nlog:\n{}",
            info.generation,
            agent.log()
        );
        if info.generation == want {
            return (info, t0.elapsed());
        }
        assert!(
            t0.elapsed() < timeout,
            "generation {want} not active within {timeout:?} (still {}); log:\n{}",
            info.generation,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rule_names(info: &RulesInfo) -> Vec<&str> {
    info.rules.iter().map(|r| r.name.as_str()).collect()
}

/// Every entry of a directory, hidden ones included, with its contents.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// A line `<file>:<line>:<column>: <message containing needle>` in `text`.
fn assert_diag(text: &str, file: &Path, line: usize, column: usize, needle: &str) {
    let prefix = format!("{}:{line}:{column}: ", file.display());
    assert!(
        text.lines()
            .any(|l| l.starts_with(&prefix) && l[prefix.len()..].contains(needle)),
        "no `{prefix}...{needle}...` line in:\n{text}"
    );
}

/// Like [`assert_diag`], for a log whose lines carry a timestamp and level first.
fn assert_logged_diag(log: &str, file: &Path, line: usize, column: usize, needle: &str) {
    let at = format!(" {}:{line}:{column}: ", file.display());
    assert!(
        log.lines().any(|l| l
            .split_once(&at)
            .is_some_and(|(_, message)| message.contains(needle))),
        "no `...{at}...{needle}...` line in the log:\n{log}"
    );
}

fn cgroup_root() -> PathBuf {
    cgroup2_mount().expect("cgroup v2 mount")
}

/// Waits (bounded) until none of `progs` / `maps` is loaded any more.
fn wait_gone(what: &str, progs: &[u32], maps: &[u32], timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let lp: Vec<(u32, String)> = loaded_progs()
            .into_iter()
            .filter(|(id, _)| progs.contains(id))
            .collect();
        let lm: Vec<(u32, String)> = loaded_maps()
            .into_iter()
            .filter(|(id, _)| maps.contains(id))
            .collect();
        if lp.is_empty() && lm.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "{what}: still loaded after {timeout:?}: programs {lp:?}, maps {lm:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------------------
// 1. Flipping rule sets under multi-run requests

#[test]
fn operator_flips_never_mix_verdicts() {
    if !kernel_or_skip("operator_flips_never_mix_verdicts") {
        return;
    }
    const FLIPS: u64 = 120;
    const CONNS: usize = 4;
    const PER_KIND: usize = 20;
    let set_a = [drop_kind("a")];
    let set_b = [drop_kind("b")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-flip.toml", &toml(&set_a))]);
    let staging = TempRules::new();
    std::fs::create_dir(staging.file("a")).unwrap();
    std::fs::create_dir(staging.file("b")).unwrap();
    let push_a = staging.write("a/50-flip.toml", &toml(&set_a));
    let push_b = staging.write("b/50-flip.toml", &toml(&set_b));
    let mut agent = AgentProcess::new("flips", rules.path(), &[rx.port()], false);
    let s0 = agent.start();

    // The traffic: CONNS keep-alive connections, each sending requests back to back, every one
    // as the head and then the body in 4 writes 2 ms apart (several sk_msg runs each).
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Mutex<BTreeMap<usize, AbcRequest>>> = Arc::default();
    let done_per_conn: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CONNS).map(|_| AtomicUsize::new(0)).collect());
    let sent_bytes = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for k in 0..CONNS {
        let (stop, next_id, sent, done, sent_bytes) = (
            stop.clone(),
            next_id.clone(),
            sent.clone(),
            done_per_conn.clone(),
            sent_bytes.clone(),
        );
        let addr = rx.addr();
        threads.push(std::thread::spawn(move || {
            let mut c = RawClient::connect(addr);
            let split = Split::HeadThenBody {
                pieces: 4,
                delay: Duration::from_millis(2),
            };
            while !stop.load(Ordering::SeqCst) {
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                let req = abc_request(id, PER_KIND, 40);
                let resp = c.roundtrip(&req.http, &split);
                assert_eq!(resp.status, 200, "request {id}");
                sent_bytes.fetch_add(req.http.len(), Ordering::SeqCst);
                sent.lock().unwrap().insert(id, req);
                done[k].fetch_add(1, Ordering::SeqCst);
            }
            c.finish();
        }));
    }
    let t_wait = Instant::now();
    while done_per_conn.iter().any(|d| d.load(Ordering::SeqCst) == 0) {
        assert!(
            t_wait.elapsed() < Duration::from_secs(20),
            "traffic did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before_flips: Vec<usize> = done_per_conn
        .iter()
        .map(|d| d.load(Ordering::SeqCst))
        .collect();

    // The flips, through `dt-agent push`, while the traffic runs.
    let g_start = agent.rules().generation;
    let t_flips = Instant::now();
    for i in 0..FLIPS {
        let file = if i % 2 == 0 { &push_b } else { &push_a };
        let o = agent.push(&[file]);
        assert!(o.status.success(), "push {i}: {}", output_text(&o));
        assert_eq!(pushed_generation(&o), g_start + i + 1, "push {i}");
    }
    let flip_time = t_flips.elapsed();
    let g_end = agent.rules().generation;
    let after_flips: Vec<usize> = done_per_conn
        .iter()
        .map(|d| d.load(Ordering::SeqCst))
        .collect();
    // Keep the traffic going a little past the last flip, then stop it.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("traffic thread");
    }
    assert_eq!(g_end - g_start, FLIPS, "one generation per push");
    for k in 0..CONNS {
        assert!(
            after_flips[k] > before_flips[k],
            "connection {k} sent nothing during the flips ({before_flips:?} -> {after_flips:?})"
        );
    }

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let total = sent.len();
    let received = rx.wait_for(total, WAIT);
    rx.assert_no_more(total, Duration::from_millis(200));
    // Which request each arrival is: its first `xc-` record (never dropped) names it.
    let (mut n_a, mut n_b, mut n_untouched) = (0u64, 0u64, 0u64);
    let mut mixed = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in &received {
        assert!(
            r.decode_error.is_none(),
            "undecodable: {:?}",
            r.decode_error
        );
        let records = r.records();
        let id: usize = records
            .iter()
            .find_map(|x| {
                let b = x.body.as_deref()?;
                let rest = b.strip_prefix("xc-r")?;
                rest.split('-').next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no xc- record in {records:?}"));
        assert!(seen.insert(id), "request {id} arrived twice");
        let req = &sent[&id];
        if r.body == req.http.payload {
            n_untouched += 1;
        } else if records == evaluate(&set_a, &req.sent).kept {
            n_a += 1;
        } else if records == evaluate(&set_b, &req.sent).kept {
            n_b += 1;
        } else {
            // Which records went missing, as `<kind><index>` (a0 = body "xa-r<id>-0 ...").
            let short = |b: &str| {
                let (kind, rest) = b.split_once("-r").unwrap_or((b, ""));
                let i = rest.split([' ', '-']).nth(1).unwrap_or("?");
                format!("{}{i}", kind.trim_start_matches('x'))
            };
            let got: Vec<&str> = records.iter().filter_map(|x| x.body.as_deref()).collect();
            let dropped: Vec<String> = req
                .sent
                .iter()
                .filter_map(|x| x.record.body.as_deref())
                .filter(|b| !got.contains(b))
                .map(short)
                .collect();
            mixed.push(format!(
                "request {id}: {} of {} records arrived; dropped [{}]",
                records.len(),
                req.sent.len(),
                dropped.join(" ")
            ));
        }
    }
    println!(
        "operator_flips: {FLIPS} flips in {flip_time:?} ({:.1} ms/flip) during {total} requests \
         on {CONNS} connections: A-verdict {n_a}, B-verdict {n_b}, untouched \
         (passthrough.generation) {n_untouched}, mixed {}",
        flip_time.as_secs_f64() * 1000.0 / FLIPS as f64,
        mixed.len()
    );
    assert!(
        mixed.is_empty(),
        "{} request(s) got a verdict that is neither A (every a dropped), nor B (every b \
         dropped), nor untouched:\n  {}",
        mixed.len(),
        mixed.join("\n  ")
    );

    let s = agent.stats();
    let per = PER_KIND as u64;
    let t = &s.totals;
    let mut problems = Vec::new();
    let mut check = |name: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("{name}: {got}, want {want}"));
        }
    };
    check("totals.connections", t.connections, CONNS as u64);
    check("totals.requests", t.requests, total as u64);
    check("totals.records", t.records, 3 * per * (n_a + n_b));
    check(
        "totals.records_dropped",
        t.records_dropped,
        per * (n_a + n_b),
    );
    check(
        "totals.bytes_in",
        t.bytes_in,
        sent_bytes.load(Ordering::SeqCst) as u64,
    );
    check("totals.bytes_out", t.bytes_out, rx.total_bytes());
    check("totals.in_flight", t.in_flight, 0);
    check("totals.edit_failures", t.edit_failures, 0);
    check(
        "passthrough.generation",
        t.passthrough["generation"],
        n_untouched,
    );
    check("passthrough (all)", s.passthrough_total(), n_untouched);
    for (name, n) in [("drop-a", n_a), ("drop-b", n_b)] {
        let r = s
            .rule(name)
            .unwrap_or_else(|| panic!("{name} not listed: {s:#?}"));
        check(&format!("{name}.matched"), r.matched, per * n);
        check(&format!("{name}.dropped"), r.dropped, per * n);
        check(&format!("{name}.kept"), r.kept, 0);
    }
    // log_requests counts walks, and a walk thrown away for its generation counts too.
    if t.log_requests < n_a + n_b || t.log_requests > total as u64 {
        problems.push(format!(
            "totals.log_requests {} outside {}..={total}",
            t.log_requests,
            n_a + n_b
        ));
    }
    assert!(
        problems.is_empty(),
        "counters disagree with the receiver:\n  {}\nstats {s:#?}",
        problems.join("\n  ")
    );
    assert_eq!(s.generation, s0.generation + FLIPS);
}

// ------------------------------------------------------------------------------------------
// 2. A bad push changes nothing

#[test]
fn operator_bad_push_changes_nothing() {
    if !kernel_or_skip("operator_bad_push_changes_nothing") {
        return;
    }
    let set = [count_all(), drop_kind("a")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    let mut agent = AgentProcess::new("badpush", rules.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(1, 3, 20);

    let s0 = agent.stats();
    let r = send_one(&rx, &req.http, &Split::head_then_body(3));
    assert_filtered("before the bad pushes", &r, &set, &req);
    let s1 = agent.stats();
    assert_delta(
        "before the bad pushes",
        &s0,
        &s1,
        Want::default().filtered(&set, &req, rx.connection_bytes()[r.conn as usize].len()),
    );
    let info0 = agent.rules();
    let dir0 = snapshot(rules.path());

    let incoming = TempRules::new();
    // An unknown key in a file replacing the active one.
    let bad = incoming.write(
        "50-test.toml",
        "[[rule]]\nname = \"a\"\naction = \"drop\"\nbogus = 1\n",
    );
    let o = agent.push(&[&bad]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert_diag(&String::from_utf8_lossy(&o.stderr), &bad, 4, 1, "bogus");
    // A valid file whose rule name clashes with the directory's set: the whole set is checked.
    let clash = incoming.write(
        "60-clash.toml",
        "[[rule]]\nname = \"extra\"\naction = \"count\"\n\n[[rule]]\nname = \"drop-a\"\naction = \"drop\"\n",
    );
    let o2 = agent.push(&[&clash]);
    assert_eq!(o2.status.code(), Some(1), "{}", output_text(&o2));
    assert_diag(&String::from_utf8_lossy(&o2.stderr), &clash, 6, 8, "drop-a");
    // Two files, one good and one bad: neither is written.
    let good = incoming.write("70-good.toml", &toml(&[drop_kind("b")]));
    let o3 = agent.push(&[&good, &bad]);
    assert_eq!(o3.status.code(), Some(1), "{}", output_text(&o3));
    assert_diag(&String::from_utf8_lossy(&o3.stderr), &bad, 4, 1, "bogus");

    assert_eq!(
        agent.rules(),
        info0,
        "rules --json after the refused pushes"
    );
    assert_eq!(
        snapshot(rules.path()),
        dir0,
        "the rules directory after the refused pushes"
    );
    let s2 = agent.stats();
    assert_eq!(s2, s1, "stats after the refused pushes");
    let r = send_one(&rx, &req.http, &Split::head_then_body(3));
    assert_filtered("after the bad pushes", &r, &set, &req);
    let s3 = agent.stats();
    assert_delta(
        "after the bad pushes",
        &s2,
        &s3,
        Want::default().filtered(&set, &req, rx.connection_bytes()[r.conn as usize].len()),
    );
    // The watcher did not pick anything up either.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.rules(), info0);
    println!(
        "operator_bad_push: stderr of the refused push:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// ------------------------------------------------------------------------------------------
// 3. Directory edits, and pushes making exactly one generation

#[test]
fn operator_directory_edits_and_push_generations() {
    if !kernel_or_skip("operator_directory_edits_and_push_generations") {
        return;
    }
    const RELOAD_BOUND: Duration = Duration::from_secs(5);
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&[drop_kind("a")]))]);
    let mut agent = AgentProcess::new("diredit", rules.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(7, 3, 20);
    let g0 = agent.rules().generation;
    let mut active: Vec<RuleSpec> = vec![drop_kind("a")];
    let mut stats = agent.stats();
    // Sends `req` and checks it is filtered by `set`, counters included.
    let traffic = |what: &str, set: &[RuleSpec], stats: &mut Stats| {
        let r = send_one(&rx, &req.http, &Split::head_then_body(3));
        assert_filtered(what, &r, set, &req);
        let now = agent.stats();
        assert_delta(
            what,
            stats,
            &now,
            Want::default().filtered(set, &req, rx.connection_bytes()[r.conn as usize].len()),
        );
        *stats = now;
    };
    traffic("initial set", &active, &mut stats);

    // A new file, written in place.
    let new = rules.write("60-new.toml", &toml(&[drop_kind("b")]));
    let (info, took_new) = wait_generation(&agent, g0 + 1, RELOAD_BOUND);
    assert_eq!(rule_names(&info), ["drop-a", "drop-b"]);
    assert_eq!(info.rules[1].file, new);
    active.push(drop_kind("b"));
    traffic("after a new file", &active, &mut stats);

    // A changed file, written the way editors do (a temporary file renamed over it).
    let tmp = rules.write("60-new.toml.tmp", &toml(&[drop_kind("c")]));
    std::fs::rename(&tmp, &new).unwrap();
    let (info, took_changed) = wait_generation(&agent, g0 + 2, RELOAD_BOUND);
    assert_eq!(rule_names(&info), ["drop-a", "drop-c"]);
    active[1] = drop_kind("c");
    traffic("after a changed file", &active, &mut stats);
    println!(
        "operator_directory_edits: new file active after {took_new:?} (polled), changed file \
         after {took_changed:?}"
    );
    assert_eq!(agent.log().matches("rules directory changed").count(), 2);

    // An invalid edit: reported, and the active set stays. Renamed over the file, as above:
    // written in place, the file is empty between its truncation and its write, a valid set
    // the watcher may read when the writer is slow (it was, once, with the suite's binaries
    // running two at a time).
    let info_before = agent.rules();
    let tmp = rules.write(
        "60-new.toml.tmp",
        "[[rule]]\nname = \"broken\"\naction = \"drop\"\nbogus = 1\n",
    );
    std::fs::rename(&tmp, &new).unwrap();
    agent.wait_log(
        "the rules directory is invalid; the active rule set stays",
        1,
        RELOAD_BOUND,
    );
    assert_logged_diag(&agent.log(), &new, 4, 1, "bogus");
    // The refusal stands in `rules` and `stats` too (JSON and tables), not only in the log.
    let mut after = agent.rules();
    let refused = after
        .rules_error
        .take()
        .expect("rules --json: no rules_error");
    assert!(
        refused.contains(&format!("{}:4:1: unknown key `bogus`", new.display())),
        "{refused}"
    );
    assert_eq!(after, info_before, "after an invalid edit");
    let s = agent.stats();
    assert_eq!(s.rules_error.as_deref(), Some(refused.as_str()));
    for verb in ["rules", "stats"] {
        let o = agent.verb(verb, &[]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("REFUSED: the last change of the rule set") && text.contains("bogus"),
            "{verb}: {text}"
        );
    }
    traffic("after an invalid edit", &active, &mut stats);

    // A push that fixes the file (a directory holding it: its rule files are pushed): exactly
    // one new generation, not a second one from the watcher seeing the agent's own write.
    let incoming = TempRules::new();
    let _fix = incoming.write("60-new.toml", &toml(&[drop_kind("b")]));
    let o = agent.push(&[incoming.path()]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(
        agent.rules().rules_error,
        None,
        "the push applied: no refusal stands"
    );
    assert_eq!(agent.stats().rules_error, None);
    assert_eq!(pushed_generation(&o), g0 + 3);
    let info = agent.rules();
    assert_eq!(info.generation, g0 + 3);
    assert_eq!(rule_names(&info), ["drop-a", "drop-b"]);
    assert_eq!(info.rules[1].file, new, "rules names the installed file");
    assert_eq!(
        std::fs::read_to_string(&new).unwrap(),
        toml(&[drop_kind("b")])
    );
    // Ten times the watcher's debounce.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        agent.rules().generation,
        g0 + 3,
        "the push made a second generation"
    );
    active[1] = drop_kind("b");
    traffic("after the push", &active, &mut stats);

    // Push-to-active latency: `dt-agent push` runs until the new generation is active.
    let dir_c = TempRules::with_files(&[("60-new.toml", &toml(&[drop_kind("c")]))]);
    let dir_b = TempRules::with_files(&[("60-new.toml", &toml(&[drop_kind("b")]))]);
    let mut lat = Vec::new();
    for i in 0..20u64 {
        let file = if i % 2 == 0 {
            dir_c.file("60-new.toml")
        } else {
            dir_b.file("60-new.toml")
        };
        let t0 = Instant::now();
        let o = agent.push(&[&file]);
        let took = t0.elapsed();
        assert!(o.status.success(), "push {i}: {}", output_text(&o));
        assert_eq!(pushed_generation(&o), g0 + 4 + i);
        // Active when push returns.
        assert_eq!(agent.stats().generation, g0 + 4 + i);
        lat.push(took);
    }
    std::thread::sleep(Duration::from_secs(1));
    let info = agent.rules();
    assert_eq!(info.generation, g0 + 23, "20 pushes, 20 generations");
    assert_eq!(rule_names(&info), ["drop-a", "drop-b"]);
    assert_eq!(agent.log().matches("rules directory changed").count(), 2);
    traffic("after 20 pushes", &active, &mut stats);

    // A change that changes nothing makes no generation (a swap lets requests in flight pass
    // as `generation`): the same file pushed again, and an invalid edit undone.
    let o = agent.push(&[&dir_b.file("60-new.toml")]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(pushed_generation(&o), g0 + 23, "the same push again");
    assert!(
        output_text(&o).contains("(unchanged: the rule set's files are as they were)"),
        "{}",
        output_text(&o)
    );
    // Written whole (renamed into place): an empty file seen half-written would be a valid,
    // different set.
    let tmp = rules.write("70-broken.toml.part", "[[rule]]\nname = \"x\"\n");
    std::fs::rename(&tmp, rules.path().join("70-broken.toml")).unwrap();
    agent.wait_log(
        "the rules directory is invalid; the active rule set stays",
        2,
        RELOAD_BOUND,
    );
    assert!(agent.rules().rules_error.is_some());
    std::fs::remove_file(rules.path().join("70-broken.toml")).unwrap();
    agent.wait_log(
        "rules directory holds the active rule set's files again: generation",
        1,
        RELOAD_BOUND,
    );
    let info = agent.rules();
    assert_eq!(info.generation, g0 + 23, "an invalid edit undone");
    assert_eq!(info.rules_error, None, "undone: no refusal stands");
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "operator_push_latency: push-to-active over {} pushes: median {:.1} ms, max {:.1} ms \
         (min {:.1} ms)",
        lat.len(),
        ms((lat[9] + lat[10]) / 2),
        ms(lat[lat.len() - 1]),
        ms(lat[0])
    );
}

/// The C library this test process runs with (its path from `/proc/self/maps`).
fn mapped_libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
        })
        .map(PathBuf::from)
        .expect("no libc mapped into the test process")
}

/// SIGHUP (`systemctl reload dt-agent`) tries a refused change again, even with the rules
/// directory as it was: here a probe's binary that was missing is installed, outside the
/// directory (neither the watcher nor the rescan, which skip files already refused, reload).
#[test]
fn operator_sighup_tries_a_refused_change_again() {
    if !kernel_or_skip("operator_sighup_tries_a_refused_change_again") {
        return;
    }
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&[drop_kind("a")]))]);
    let mut agent = AgentProcess::new("sighup", rules.path(), &[rx.port()], false);
    agent.start();
    let g0 = agent.rules().generation;
    let lib_dir = tempfile::tempdir().unwrap();
    let lib = lib_dir.path().join("libdt-test-copy.so.6");
    rules.write(
        "60-probe.toml",
        &format!(
            "[[probe]]\nname = \"copy\"\npreset = \"syslog\"\nbinary = \"{}\"\n\n\
             [[rule]]\nname = \"count-copy\"\naction = \"count\"\nhooks = [\"uprobe:copy\"]\n",
            lib.display()
        ),
    );
    agent.wait_log(
        "the rules directory is invalid; the active rule set stays",
        1,
        Duration::from_secs(5),
    );
    let refused = agent.rules().rules_error.expect("a refusal stands");
    assert!(refused.contains(&lib.display().to_string()), "{refused}");

    // The binary appears; the files are as they were: nothing reloads by itself, not even the
    // rescan of the directory (every 10 s).
    std::fs::copy(mapped_libc(), &lib).unwrap();
    std::thread::sleep(dt_agent::service::RESCAN_EVERY + Duration::from_secs(1));
    assert_eq!(agent.rules().generation, g0);
    assert!(agent.rules().rules_error.is_some());
    // SAFETY: kill(2) on the agent's pid, a child of this test.
    assert_eq!(
        unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) },
        0
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = agent.rules();
        if info.generation > g0 {
            break info;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not apply the set");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(info.generation, g0 + 1);
    assert_eq!(info.rules_error, None, "the refusal is cleared");
    assert_eq!(rule_names(&info), ["drop-a", "count-copy"]);
    assert!(
        agent
            .log()
            .contains("SIGHUP: reading the rules directory again"),
        "{}",
        agent.log()
    );
}

// ------------------------------------------------------------------------------------------
// 4. The rip cord, with the agent running and on the pins after kill -9

#[test]
fn operator_disable_enable_running_and_on_pins() {
    if !kernel_or_skip("operator_disable_enable_running_and_on_pins") {
        return;
    }
    let set = [drop_kind("a")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    let mut agent = AgentProcess::new("ripcord", rules.path(), &[rx.port()], true);
    agent.start();
    let req = abc_request(3, 3, 20);
    let splits = [Split::Whole, Split::head_then_body(3)];

    // Filtered; disabled: untouched; enabled: filtered again. `phase` checks one of them.
    let phase = |agent: &AgentProcess, what: &str, enabled: bool| {
        let s0 = agent.stats();
        assert_eq!(
            s0.enabled, enabled,
            "{what}: stats says enabled={}",
            s0.enabled
        );
        let mut want = Want::default();
        for split in &splits {
            let r = send_one(&rx, &req.http, split);
            if enabled {
                assert_filtered(what, &r, &set, &req);
                want.filtered(&set, &req, rx.connection_bytes()[r.conn as usize].len());
            } else {
                assert_untouched(what, &rx, &r, &req);
                want.passed("disabled", &req);
            }
        }
        assert_delta(what, &s0, &agent.stats(), &want);
    };
    phase(&agent, "running, enabled", true);

    let o = agent.verb("disable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(!agent.rules().enabled);
    phase(&agent, "running, disabled", false);
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(agent.rules().enabled);
    phase(&agent, "running, enabled again", true);

    // kill -9: the pins go on filtering, and the rip cord works on them.
    let st = agent.kill9();
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    phase(&agent, "killed, enabled", true);
    let o = agent.verb("disable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no agent is running"),
        "{}",
        output_text(&o)
    );
    phase(&agent, "killed, disabled on the pins", false);
    // `uninstall` needs the agent (it waits for held requests), and says how to do without.
    let o = agent.verb("uninstall", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("if it cannot start, remove the pinned filter"),
        "{}",
        output_text(&o)
    );
    // `stats` with no agent says on stderr that the numbers are the pinned filter's.
    let o = agent.verb("stats", &["--json"]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no agent answers on")
            && String::from_utf8_lossy(&o.stderr).contains("the counters of the pinned filter"),
        "{}",
        output_text(&o)
    );
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no agent is running"));
    phase(&agent, "killed, enabled on the pins", true);

    // An agent that adopts a disabled filter says so in its log, and it stays disabled.
    let o = agent.verb("disable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    agent.start();
    assert!(
        agent.log().contains(
            "the adopted filter is DISABLED: the rip cord is pulled (dt-agent disable): every \
             request passes untouched; `dt-agent enable` turns it on"
        ),
        "{}",
        agent.log()
    );
    phase(&agent, "adopted, disabled", false);
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    phase(&agent, "adopted, enabled", true);
}

// ------------------------------------------------------------------------------------------
// 5. kill -9 with pins; restart adopts; uninstall removes everything

#[test]
fn operator_kill9_pinned_then_restart_adopts_then_uninstall() {
    if !kernel_or_skip("operator_kill9_pinned_then_restart_adopts_then_uninstall") {
        return;
    }
    let set0 = [count_all(), drop_kind("a")];
    let pushed = [count_all(), drop_kind("b")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set0))]);
    let mut agent = AgentProcess::new("kill9", rules.path(), &[rx.port()], true);
    agent.start();
    assert!(agent.log().contains("attached"), "{}", agent.log());
    let req = abc_request(5, 3, 20);
    let split = Split::head_then_body(3);
    let cg = cgroup_root();

    let s0 = agent.stats();
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("first set", &r, &set0, &req);
    let s1 = agent.stats();
    assert_delta(
        "first set",
        &s0,
        &s1,
        Want::default().filtered(&set0, &req, rx.connection_bytes()[r.conn as usize].len()),
    );

    // Push, then kill -9 right away.
    let incoming = TempRules::new();
    let file = incoming.write("50-test.toml", &toml(&pushed));
    let o = agent.push(&[&file]);
    assert!(o.status.success(), "{}", output_text(&o));
    let g_pushed = pushed_generation(&o);
    let s_pre = agent.stats();
    let (link_id, prog_old) = pinned_link(&agent.pin_dir().join("sockops_link"));
    let old_ids = agent.bpf_ids();
    assert!(old_ids.progs.contains(&prog_old));
    let ours_old: Vec<_> = cgroup_sock_ops(&cg)
        .into_iter()
        .filter(|(id, _)| old_ids.progs.contains(id))
        .collect();
    assert_eq!(
        ours_old,
        [(prog_old, "dt_sockops".to_string())],
        "our sock_ops programs on {}",
        cg.display()
    );
    let st = agent.kill9();
    assert_eq!(st.signal(), Some(libc::SIGKILL));

    // No agent: the pins still filter with the pushed set, and count.
    let s_kill = agent.stats();
    assert_eq!(s_kill.generation, g_pushed);
    assert_eq!(flat(&s_kill), flat(&s_pre), "counters read from the pins");
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("after kill -9", &r, &pushed, &req);
    let s_dead = agent.stats();
    assert_delta(
        "after kill -9 (read from the pins)",
        &s_kill,
        &s_dead,
        Want::default().filtered(&pushed, &req, rx.connection_bytes()[r.conn as usize].len()),
    );
    assert_eq!(
        s_dead.rule("drop-a").map(|r| r.active),
        Some(false),
        "{s_dead:#?}"
    );

    // Restart with the same settings: it adopts the pins.
    let s_restart = agent.start();
    let log = agent.log();
    assert!(log.contains("adopted pinned state"), "log:\n{log}");
    let (link_id2, prog_new) = pinned_link(&agent.pin_dir().join("sockops_link"));
    assert_eq!(link_id2, link_id, "the pinned link is kept");
    assert_ne!(prog_new, prog_old, "the link runs the new agent's program");
    let new_ids = agent.bpf_ids();
    assert!(new_ids.progs.contains(&prog_new));
    let cg_now = cgroup_sock_ops(&cg);
    let ours_new: Vec<_> = cg_now
        .iter()
        .filter(|(id, _)| new_ids.progs.contains(id) || old_ids.progs.contains(id))
        .cloned()
        .collect();
    assert_eq!(
        ours_new,
        [(prog_new, "dt_sockops".to_string())],
        "exactly one sock_ops program of ours on {} (all: {cg_now:?})",
        cg.display()
    );
    // Counters carry on from where they were, generation one up (the directory is re-read).
    assert_eq!(s_restart.generation, g_pushed + 1);
    assert_eq!(
        flat(&s_restart),
        flat(&s_dead),
        "counters after the restart"
    );
    let info = agent.rules();
    assert_eq!(info.generation, g_pushed + 1);
    assert_eq!(rule_names(&info), ["count-all", "drop-b"]);
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("after the restart", &r, &pushed, &req);
    let s_after = agent.stats();
    assert_delta(
        "after the restart",
        &s_restart,
        &s_after,
        Want::default().filtered(&pushed, &req, rx.connection_bytes()[r.conn as usize].len()),
    );
    for (k, v) in flat(&s_after) {
        let before = flat(&s1).get(&k).copied().unwrap_or(0);
        assert!(
            k == "totals.in_flight" || v >= before,
            "{k} went down: {before} -> {v}"
        );
    }

    // Uninstall: every pin goes, the agent exits, nothing of ours stays attached.
    let o = agent.verb("uninstall", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let st = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(
        st.code(),
        Some(0),
        "exit after uninstall; log:\n{}",
        agent.log()
    );
    assert!(
        !agent.pin_dir().exists(),
        "{} is still there",
        agent.pin_dir().display()
    );
    assert!(
        !agent.pin_root().exists(),
        "{} is still there",
        agent.pin_root().display()
    );
    let still: Vec<_> = cgroup_sock_ops(&cg)
        .into_iter()
        .filter(|(id, _)| *id == prog_new || *id == prog_old)
        .collect();
    assert!(still.is_empty(), "still attached: {still:?}");
    let links = dt_tests::agent_process::bpftool_json(&["link", "show"]);
    assert!(
        !links
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["id"].as_u64() == Some(link_id as u64)),
        "link {link_id} still exists"
    );
    let progs: Vec<u32> = old_ids.progs.union(&new_ids.progs).copied().collect();
    let maps: Vec<u32> = old_ids.maps.union(&new_ids.maps).copied().collect();
    wait_gone("after uninstall", &progs, &maps, Duration::from_secs(10));
    let r = send_one(&rx, &req.http, &split);
    assert_untouched("after uninstall", &rx, &r, &req);
    println!(
        "operator_kill9: link {link_id} kept, sock_ops program {prog_old} replaced by {prog_new}; \
         generation {g_pushed} -> {} after the restart; records {} -> {}",
        g_pushed + 1,
        s_pre.totals.records,
        s_after.totals.records
    );
}

// ------------------------------------------------------------------------------------------
// 6. SIGTERM without pins during a slow split request

#[test]
fn operator_sigterm_unpinned_during_split_request() {
    if !kernel_or_skip("operator_sigterm_unpinned_during_split_request") {
        return;
    }
    let set = [drop_kind("a")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    let mut agent = AgentProcess::new("sigterm", rules.path(), &[rx.port()], false);
    agent.start();
    let ids = agent.bpf_ids();
    let progs = loaded_progs();
    let mut names: Vec<&str> = progs
        .iter()
        .filter(|(id, _)| ids.progs.contains(id))
        .map(|(_, n)| n.as_str())
        .collect();
    names.sort();
    assert!(
        names.contains(&"dt_msg") && names.contains(&"dt_sockops"),
        "the agent's programs: {names:?}"
    );
    assert!(!ids.maps.is_empty());

    let req = abc_request(9, 20, 60);
    let head = req.http.head_len;
    let body = req.http.len() - head;
    let cut1 = head + body / 3;
    let cut2 = head + 2 * body / 3;
    let mut c = RawClient::connect(rx.addr());
    c.write_chunks(
        &[&req.http.bytes[..head], &req.http.bytes[head..cut1]],
        Duration::from_millis(20),
    );
    // It is held in the kernel, waiting for the rest.
    let t0 = Instant::now();
    while agent.stats().totals.in_flight != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the request is not corked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.is_running(), "the agent must wait for the request");
    c.write_chunks(
        &[&req.http.bytes[cut1..cut2], &req.http.bytes[cut2..]],
        Duration::from_millis(100),
    );
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    let st = agent.wait_exit(Duration::from_secs(15));
    let log = agent.log();
    assert_eq!(st.code(), Some(0), "exit after SIGTERM; log:\n{log}");
    assert!(!log.contains("still corked"), "log:\n{log}");
    let got = rx.wait_for(1, WAIT);
    let r = &got[0];
    assert!(r.decode_error.is_none(), "{:?}", r.decode_error);
    let verdict = if r.body == req.http.payload {
        "untouched"
    } else {
        assert_filtered("split request across SIGTERM", r, &set, &req);
        "filtered"
    };
    // The connection goes on, untouched, with nothing attached.
    let req2 = abc_request(10, 3, 20);
    assert_eq!(
        c.roundtrip(&req2.http, &Split::head_then_body(3)).status,
        200
    );
    let sent = c.sent.clone();
    c.finish();
    let got = rx.wait_for(2, WAIT);
    assert!(got[1].body == req2.http.payload, "after exit: edited");
    if verdict == "untouched" {
        assert_eq!(rx.connection_bytes()[0], sent);
    }
    let progs: Vec<u32> = ids.progs.iter().copied().collect();
    let maps: Vec<u32> = ids.maps.iter().copied().collect();
    wait_gone("after SIGTERM", &progs, &maps, Duration::from_secs(10));
    println!(
        "operator_sigterm: the split request ({} bytes) arrived {verdict}; programs {progs:?} and \
         {} maps gone",
        req.http.len(),
        maps.len()
    );
}

// ------------------------------------------------------------------------------------------
// 7. A non-root peer is refused

#[test]
fn operator_non_root_peer_is_refused() {
    if !kernel_or_skip("operator_non_root_peer_is_refused") {
        return;
    }
    const NOBODY: u32 = 65534;
    let set = [drop_kind("a")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    let mut agent = AgentProcess::new("nonroot", rules.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(11, 3, 20);
    let r = send_one(&rx, &req.http, &Split::head_then_body(3));
    assert_filtered("before", &r, &set, &req);

    // Widen every permission a non-root user would need to reach the socket.
    std::fs::set_permissions(agent.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let incoming = tempfile::tempdir().unwrap();
    std::fs::set_permissions(incoming.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = incoming.path().join("60-more.toml");
    std::fs::write(&file, toml(&[drop_kind("b")])).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let s0 = agent.stats();
    let info0 = agent.rules();
    let dir0 = snapshot(rules.path());
    // The binary may sit under a directory nobody cannot enter (a `mktemp -d` clone is
    // 0700), so nobody runs a copy from a world-readable directory.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody_bin = bin_dir.path().join("dt-agent");
    std::fs::copy(dt_tests::agent_process::bin(), &nobody_bin).unwrap();
    std::fs::set_permissions(&nobody_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |verb: &str, args: &[&str]| {
        let root_cmd = agent.verb_command(verb, args);
        let mut cmd = std::process::Command::new(&nobody_bin);
        cmd.args(root_cmd.get_args());
        for (k, v) in root_cmd.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.uid(NOBODY).gid(NOBODY);
        dt_agent_cmd(
            cmd,
            Duration::from_secs(30),
            &format!("dt-agent {verb} as nobody"),
        )
    };
    let file_s = file.to_str().unwrap();
    let mut refused = 0;
    for (verb, args) in [
        ("stats", vec!["--json"]),
        ("rules", vec!["--json"]),
        ("disable", vec![]),
        ("enable", vec![]),
        ("push", vec![file_s]),
        ("flush", vec!["some-recorder"]),
        ("state", vec!["some-state", "on"]),
        ("uninstall", vec![]),
    ] {
        let o = as_nobody(verb, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{verb} as nobody: {}",
            output_text(&o)
        );
        assert!(
            err.to_lowercase().contains("permission denied"),
            "{verb} as nobody: {}",
            output_text(&o)
        );
        assert!(o.stdout.is_empty(), "{verb} as nobody: {}", output_text(&o));
        refused += 1;
    }
    agent.wait_log(
        &format!("refused a control connection from uid {NOBODY}"),
        refused,
        Duration::from_secs(5),
    );
    assert!(agent.is_running());
    assert_eq!(agent.stats(), s0, "stats after the refused calls");
    assert_eq!(agent.rules(), info0, "rules after the refused calls");
    assert_eq!(snapshot(rules.path()), dir0);
    let r = send_one(&rx, &req.http, &Split::head_then_body(3));
    assert_filtered("after", &r, &set, &req);
    println!("operator_non_root: {refused} verbs as uid {NOBODY} refused; nothing changed");
}

// ------------------------------------------------------------------------------------------
// 8. The rip cord on a hung agent (SIGSTOP), pinned and not

/// Waits (bounded) until process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn wait_stopped(pid: u32) {
    let t0 = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // `pid (comm) state ...`: the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if state == Some('T') {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "process {pid} is not stopped: {stat}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The most a rip cord verb may take against a hung agent.
const RIPCORD_LIMIT: Duration = Duration::from_secs(5);

/// `dt-agent <verb>` (disable or enable) against the stopped `agent`: exit 0 within
/// [`RIPCORD_LIMIT`], saying that it went around the agent. Returns how long it took.
fn ripcord_verb_on_hung(agent: &AgentProcess, verb: &str) -> Duration {
    let t0 = Instant::now();
    let o = agent.verb(verb, &[]);
    let took = t0.elapsed();
    assert!(
        o.status.success(),
        "{verb} on a stopped agent: {}",
        output_text(&o)
    );
    assert!(
        took < RIPCORD_LIMIT,
        "{verb} on a stopped agent took {took:?}: {}",
        output_text(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let said = format!("the agent (pid {}) did not answer within 2s", agent.pid());
    assert!(out.contains(&said), "{verb}: {}", output_text(&o));
    assert!(
        out.contains("directly on its kernel state"),
        "{verb}: {}",
        output_text(&o)
    );
    took
}

/// An agent filtering; SIGSTOP; `disable` returns within 5 s and the next request passes
/// untouched; `enable` re-arms it, `disable` again; `stats` does not hang; SIGCONT: the agent
/// serves again, counted what passed while it was stopped, and `enable` through it filters again.
/// `bystander`: another agent runs meanwhile, and its cord must stay where it was.
fn ripcord_on_hung_agent(name: &str, pin: bool, bystander: bool) {
    let set = [drop_kind("a")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    let mut agent = AgentProcess::new(name, rules.path(), &[rx.port()], pin);
    agent.start();
    let other_rx = Receiver::start_v4();
    let mut other = AgentProcess::new(
        &format!("{name}-other"),
        rules.path(),
        &[other_rx.port()],
        false,
    );
    if bystander {
        other.start();
    }
    let req = abc_request(12, 3, 20);
    let split = Split::head_then_body(3);
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("running", &r, &set, &req);
    let s0 = agent.stats();
    assert!(s0.enabled);
    let mut want = Want::default();

    agent.signal(libc::SIGSTOP);
    wait_stopped(agent.pid());
    let pid = agent.pid();

    let took_disable = ripcord_verb_on_hung(&agent, "disable");
    let r = send_one(&rx, &req.http, &split);
    assert_untouched("stopped, disabled", &rx, &r, &req);
    want.passed("disabled", &req);

    // `stats` does not hang either: from the pins when there are some, else a plain error.
    let t0 = Instant::now();
    let o = agent.verb("stats", &["--json"]);
    let took_stats = t0.elapsed();
    assert!(
        took_stats < RIPCORD_LIMIT,
        "stats on a stopped agent took {took_stats:?}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("the agent (pid {pid}) did not answer within 2s")),
        "stats on a stopped agent: {}",
        output_text(&o)
    );
    if pin {
        assert!(o.status.success(), "{}", output_text(&o));
        assert!(err.contains("from the pinned maps"), "{}", output_text(&o));
        let s: Stats = serde_json::from_slice(&o.stdout).unwrap();
        assert!(!s.enabled, "stats from the pins: enabled");
        assert_delta("stopped, stats from the pins", &s0, &s, &want);
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
        assert!(o.stdout.is_empty(), "{}", output_text(&o));
        assert!(
            err.contains(&format!("kill -CONT {pid}")),
            "{}",
            output_text(&o)
        );
    }

    let took_enable = ripcord_verb_on_hung(&agent, "enable");
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("stopped, enabled again", &r, &set, &req);
    want.filtered(&set, &req, rx.connection_bytes()[r.conn as usize].len());
    ripcord_verb_on_hung(&agent, "disable");
    let r = send_one(&rx, &req.http, &split);
    assert_untouched("stopped, disabled again", &rx, &r, &req);
    want.passed("disabled", &req);

    if bystander {
        // The other agent's cord was not pulled: it still filters.
        assert!(other.rules().enabled, "the bystander agent was disabled");
        let r = send_one(&other_rx, &req.http, &split);
        assert_filtered("bystander", &r, &set, &req);
    }

    // Resumed, the agent answers again and sees the switch as it was left.
    agent.signal(libc::SIGCONT);
    let s1 = agent.stats();
    assert!(!s1.enabled, "resumed: stats says enabled");
    assert_delta("resumed", &s0, &s1, &want);
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("did not answer"),
        "enable on the resumed agent: {}",
        output_text(&o)
    );
    assert!(agent.rules().enabled);
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("resumed, enabled", &r, &set, &req);
    assert!(agent.is_running());
    println!(
        "{name}: on the stopped agent, disable took {took_disable:?}, enable {took_enable:?}, \
         stats {took_stats:?}"
    );
}

#[test]
fn operator_ripcord_sigstopped_agent_pinned() {
    if !kernel_or_skip("operator_ripcord_sigstopped_agent_pinned") {
        return;
    }
    ripcord_on_hung_agent("hung-pinned", true, false);
}

#[test]
fn operator_ripcord_sigstopped_agent_unpinned() {
    if !kernel_or_skip("operator_ripcord_sigstopped_agent_unpinned") {
        return;
    }
    ripcord_on_hung_agent("hung-unpinned", false, true);
}

/// Connects to `socket` (non-blocking) and hangs up, again and again, until the listener's
/// backlog is full and connecting fails with EAGAIN; returns how many connections it queued.
fn fill_backlog(socket: &Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let path = socket.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path fits (asserted).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    assert!(path.len() < addr.sun_path.len(), "socket path too long");
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    for queued in 0..100_000 {
        // SAFETY: plain socket/connect/close calls on a descriptor this loop owns.
        let (rc, err) = unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let rc = libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            (rc, err)
        };
        if rc != 0 {
            assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "connect: {err}");
            return queued;
        }
    }
    panic!("the backlog of {} never filled", socket.display());
}

/// A stopped agent whose backlog is full (every client that gave up stays queued): connecting
/// fails (EAGAIN) until the deadline, so the client learns no pid from a connection; it finds the
/// listener through `/proc/net/unix` and pulls the cord all the same.
#[test]
fn operator_ripcord_sigstopped_agent_full_backlog() {
    if !kernel_or_skip("operator_ripcord_sigstopped_agent_full_backlog") {
        return;
    }
    let set = [drop_kind("a")];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    let mut agent = AgentProcess::new("hung-backlog", rules.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(14, 3, 20);
    let split = Split::head_then_body(3);
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("running", &r, &set, &req);

    agent.signal(libc::SIGSTOP);
    wait_stopped(agent.pid());
    let queued = fill_backlog(agent.socket());
    let took = ripcord_verb_on_hung(&agent, "disable");
    let r = send_one(&rx, &req.http, &split);
    assert_untouched("stopped, backlog full, disabled", &rx, &r, &req);

    // Resumed, the agent drops the queued connections of clients that are gone and serves again.
    agent.signal(libc::SIGCONT);
    assert!(!agent.stats().enabled, "resumed: stats says enabled");
    let o = agent.verb("enable", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    let r = send_one(&rx, &req.http, &split);
    assert_filtered("resumed, enabled", &r, &set, &req);
    println!("operator_ripcord_full_backlog: {queued} connections queued; disable took {took:?}");
}

// ------------------------------------------------------------------------------------------
// 9. Plain messages with no agent, and for a non-root user

/// A world-readable copy of the `dt-agent` binary (the build tree may sit under a directory
/// nobody cannot enter), and a world-readable empty config, in a directory of their own.
fn nobody_copy() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("dt-agent");
    std::fs::copy(dt_tests::agent_process::bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "# dt-tests: everything comes from flags\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, bin, config)
}

#[test]
fn operator_ripcord_plain_messages_without_agent_and_for_non_root() {
    if !kernel_or_skip("operator_ripcord_plain_messages_without_agent_and_for_non_root") {
        return;
    }
    const NOBODY: u32 = 65534;
    let set = [drop_kind("a")];
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&set))]);
    // Never started: its socket and pin root are empty paths.
    let absent = AgentProcess::new("msg-absent", rules.path(), &[1], false);
    // Running, so that dt is loaded in the kernel, for another socket and pin root.
    let rx = Receiver::start_v4();
    let mut other = AgentProcess::new("msg-other", rules.path(), &[rx.port()], false);
    other.start();

    // Root, no agent, no pins.
    let socket = absent.socket().display().to_string();
    let pins = absent.pin_root().display().to_string();
    let o = absent.verb("stats", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(o.stdout.is_empty(), "{}", output_text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        format!(
            "dt-agent: no agent is running (nothing answers on {socket}) and nothing is pinned \
             under {pins}: there are no counters to show. Start the agent (`dt-agent run`, or \
             `systemctl start dt-agent`), or give --socket, --pin-dir or --config if it uses \
             other paths"
        ),
        "stats, no agent, no pins"
    );
    let o = absent.verb("enable", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("dt-agent: no agent is running")
            && err.contains("there is nothing to enable"),
        "enable, no agent, no pins: {}",
        output_text(&o)
    );
    // disable: this agent is not there, but another one is loaded; it is named, not touched.
    let o = absent.verb("disable", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "dt-agent: no agent answers on {socket} and nothing is pinned under {pins}, but dt \
             is loaded in the kernel by another agent"
        )) && err
            .split_once("held by pid")
            .is_some_and(|(_, pids)| pids.contains(&other.pid().to_string())),
        "disable, no agent, no pins, another agent loaded: {}",
        output_text(&o)
    );
    assert!(other.rules().enabled, "the other agent was disabled");

    // Non-root: the same verbs say that root is needed, whether an agent runs (its socket's
    // directory is root's) or not.
    let (_dir, bin, config) = nobody_copy();
    for (what, socket) in [("no agent", absent.socket()), ("an agent", other.socket())] {
        for verb in ["stats", "disable"] {
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg(verb)
                .arg("--socket")
                .arg(socket)
                .arg("--pin-dir")
                .arg(absent.pin_root())
                .arg("--config")
                .arg(&config)
                .uid(NOBODY)
                .gid(NOBODY);
            let o = dt_agent_cmd(cmd, Duration::from_secs(30), &format!("{verb} as nobody"));
            assert_eq!(o.status.code(), Some(1), "{verb} as nobody, {what}");
            assert!(o.stdout.is_empty(), "{verb} as nobody: {}", output_text(&o));
            assert_eq!(
                String::from_utf8_lossy(&o.stderr).trim_end(),
                format!(
                    "dt-agent: permission denied: `dt-agent {verb}` needs root (you are uid \
                     {NOBODY}): dt's control socket {} and its pinned state are root's. Run it \
                     as root, e.g. `sudo dt-agent {verb}`",
                    socket.display()
                ),
                "{verb} as nobody, {what}"
            );
        }
    }
    assert!(other.rules().enabled);
    let req = abc_request(13, 3, 20);
    let r = send_one(&rx, &req.http, &Split::Whole);
    assert_filtered("the other agent, after all this", &r, &set, &req);
}

// ---------------------------------------------------------------------------------------------
// 8. Counter slots are taken back from removed rules

/// Rule names come and go (generated names, renames): once every one of the 1,024 counter
/// slots has had a rule, the next new name takes the slot of a removed rule, whose counts (and
/// groups: eight rules of each set are grouped by service) start again from zero and whose
/// name is forgotten. Pushes never fail for names seen long ago.
#[test]
fn removed_rules_give_their_counter_slots_back() {
    if !kernel_or_skip("removed_rules_give_their_counter_slots_back") {
        return;
    }
    let receiver = Receiver::start_v4();
    let set = |g: usize| {
        let specs: Vec<RuleSpec> = (0..128)
            .map(|i| {
                let r = RuleSpec::count(&format!("g{g}-r{i}"));
                if i < 8 {
                    r.group_by("service", None)
                } else {
                    r
                }
            })
            .collect();
        TempRules::from_rules(&specs)
    };
    let send = |n: usize| {
        let mut b = LogsRequestBuilder::new().resource("svc").scope("ops");
        for i in 0..n {
            b = b.record(Rec::new(9, &format!("r{i}")));
        }
        let req = HttpRequestBuilder::logs(encode(&b.build())).build();
        let mut c = RawClient::connect(receiver.addr());
        assert_eq!(c.roundtrip(&req, &Split::Whole).status, 200);
        c.finish();
    };
    let first = set(0);
    let mut agent = start_agent(&first, &[receiver.port()]);
    send(3);
    // Eight sets of 128 new names: every slot has had a rule.
    for g in 1..8 {
        agent
            .reload(set(g).path())
            .expect("a set while slots are free");
    }
    let s = stats_of(&agent);
    assert_eq!(s.rules.len(), 1024);
    assert_eq!(
        s.rule("g0-r5").map(|r| (r.active, r.matched)),
        Some((false, 3))
    );
    // A ninth: it takes g0's slots back (the lowest of the removed rules'), from zero.
    agent
        .reload(set(8).path())
        .expect("a set of new names with every slot used once");
    send(4);
    let s = stats_of(&agent);
    assert_eq!(s.rules.len(), 1024);
    assert!(s.rule("g0-r5").is_none(), "g0's names are forgotten");
    for i in 0..128 {
        let r = s.rule(&format!("g8-r{i}")).expect("listed");
        assert_eq!((r.active, r.matched), (true, 4), "g8-r{i} starts from zero");
        // No group of the slot's last rule is left behind, under this rule or another.
        let counted: Option<BTreeMap<String, u64>> = r.groups.as_ref().map(|g| {
            g.iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.clone(), *n))
                .collect()
        });
        let want = (i < 8).then(|| BTreeMap::from([("svc".to_string(), 4u64)]));
        assert_eq!(counted, want, "g8-r{i}'s groups that counted");
    }
    assert_eq!(
        s.rule("g1-r0").map(|r| (r.active, r.matched)),
        Some((false, 0))
    );
    // And g0 again: its names are new now, and take g1's slots.
    agent.reload(first.path()).expect("g0 again");
    let s = stats_of(&agent);
    assert!(s.rule("g1-r0").is_none());
    assert_eq!(
        s.rule("g0-r5").map(|r| (r.active, r.matched)),
        Some((true, 0))
    );
    assert_eq!(
        s.rule("g8-r5").map(|r| (r.active, r.matched)),
        Some((false, 4))
    );
}

/// `idle_after_uninstall` (the Kubernetes DaemonSet's config): after `uninstall` the agent
/// stays up with nothing of dt attached or pinned, its metrics endpoint answering 200 (a
/// liveness probe keeps passing, so the kubelet does not restart it and attach dt again), until
/// SIGTERM, on which it exits 0.
#[test]
fn uninstall_with_idle_after_uninstall_stays_up_detached_until_sigterm() {
    if !kernel_or_skip("uninstall_with_idle_after_uninstall_stays_up_detached_until_sigterm") {
        return;
    }
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-test.toml", &toml(&[count_all()]))]);
    let mut agent = AgentProcess::new("idle-uninstall", rules.path(), &[rx.port()], true);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    agent.write_config(&format!(
        "idle_after_uninstall = true\nmetrics_addr = \"127.0.0.1:{port}\"\n"
    ));
    agent.start();
    let get_metrics = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(get_metrics().contains("dt_rule_matched_total"));
    let (_, prog) = pinned_link(&agent.pin_dir().join("sockops_link"));

    let o = agent.verb("uninstall", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.is_running(), "log:\n{}", agent.log());
    assert!(!agent.pin_dir().exists(), "{}", agent.pin_dir().display());
    assert!(
        !cgroup_sock_ops(&cgroup_root())
            .iter()
            .any(|(id, _)| *id == prog),
        "the sock_ops program is still attached"
    );
    let text = get_metrics();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("# dt-agent: dt was uninstalled"), "{text}");
    // The verbs say so, and `disable` has nothing to do.
    for (verb, ok) in [("stats", false), ("enable", false), ("disable", true)] {
        let o = agent.verb(verb, &[]);
        assert_eq!(o.status.success(), ok, "{verb}: {}", output_text(&o));
        assert!(
            ok || output_text(&o).contains("dt was uninstalled"),
            "{verb}: {}",
            output_text(&o)
        );
    }
    let o = agent.push(&[&rules.path().join("50-test.toml")]);
    assert!(
        !o.status.success() && output_text(&o).contains("dt was uninstalled"),
        "{}",
        output_text(&o)
    );
    // Traffic passes untouched, unseen.
    let req = abc_request(5, 3, 20);
    let r = send_one(&rx, &req.http, &Split::head_then_body(3));
    assert_eq!(r.body, req.http.payload, "the request arrives as sent");

    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(st.code(), Some(0), "log:\n{}", agent.log());
    assert!(
        agent.log().contains("idle until SIGTERM"),
        "{}",
        agent.log()
    );
}
