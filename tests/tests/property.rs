//! Random input through the kernel.
//!
//! Random ExportLogsServiceRequests, hand-encoded the way real encoders write them (any field
//! order, repeated singular fields, unknown fields of every wire type, non-string bodies and
//! values, out-of-range and negative severities, padded varints, empty scopes and resources),
//! and random rule sets (count, drop, sample, redact), go through the real sk_msg path: one agent
//! hooking the ports of a few receivers, requests over TCP in random write splits, several per
//! keep-alive connection, some pipelined. Every request's outcome is checked against an
//! independent reference (`dt_tests::proptest_gen`: prost decoding + the rule model, `dt_tests::model`):
//! - the exact bytes that arrive: dropped records and removed attributes gone, every enclosing
//!   length prefix rewritten in the bytes it had, masked bodies, Content-Length rewritten;
//! - what the receiver decodes: the whole request, record by record;
//! - the counters after every response: per rule (matched, kept, dropped, dropped_bytes,
//!   redacted) and the totals (requests, log_requests, records, records_dropped, bytes_in,
//!   bytes_out, every passthrough reason, edit_failures);
//! - after every round, each `group_by` count rule's `groups` in `stats --json` over the run
//!   (a group not listed counts 0), and no groups on the other rules.
//!
//! Rules match on severity, service, event_name, body_contains, and string, int and bool
//! attributes (records give the same keys values of other types, several `event_name` fields,
//! bools written as 2 or in 10 bytes, negative ints); count rules sometimes have a `group_by`
//! (service, severity, event_name or an attribute) with a small `max_groups`.
//!
//! Values nest: array and kvlist values inside each other in record bodies and attributes,
//! resource and scope attributes, sometimes near and past dt's depth bound; strings sometimes
//! hold invalid UTF-8 (bytes to dt: still valid, still edited). Some requests are made malformed
//! on purpose, in any message at any depth (the body cut, a length past its parent, a bytes
//! field running past its message, a varint or fixed value cut by its message's end, an
//! over-long varint, field number 0, a known field with another wire type, groups balanced or
//! not, wire types 6 and 7). Which requests dt must pass through is decided by the reference,
//! not by what the generator meant: `malformed` when the real decoder (`dt_tests::oracle`,
//! prost with strings as bytes) refuses the body, or when it holds a group wire type (which
//! prost skips and dt refuses); `too_deep` when it is valid but nests deeper than dt's bound.
//! Those must arrive byte for byte, count under their reason only, and move no rule: in
//! particular a sample rule's one-in-N sequence goes on as if they were never sent.
//!
//! Some requests (`GenConfig::chunked`) go `Transfer-Encoding: chunked` on the same keep-alive
//! connections as Content-Length ones (README, "Chunked requests"). One data chunk (size digits
//! of any width up to dt's 7, either case, sometimes `;name=value` extensions): walked like a
//! Content-Length request, the same edits, the chunk size rewritten in lowercase hex zero-padded
//! to its digits when bytes were removed, the rest of the framing as sent; malformed or too deep
//! ones pass byte for byte under their reason. Several data chunks (2 to 10, cut at random, the
//! body valid or not): walked the same; when dt's plan has anything in it, rewritten as one
//! chunk (the size zero-padded to the digits the old length needs), else byte for byte as sent.
//! The wire is delimited by the chunk framing that arrives.
//!
//! Some rule sets (`GenConfig::enrich`) have an `[enrich]` table (README, "Enrich") listing
//! some of process.pid, host.name, container.id and k8s.pod.uid. Every request dt walks and
//! sends on then gets, at the end of each ResourceLogs whose Resources (all its `resource`
//! fields) lack some of them, one more `resource` field with the missing ones the sender has
//! (this process's pid, the host name; no container here), the ResourceLogs' length prefix
//! rewritten in the bytes it had, Content-Length or the chunk size growing as needed. Resources
//! sometimes carry them already (any value, or none; keys that only look like them do not
//! count), and some ResourceLogs are made to just fit or just overflow their prefix (127,
//! 16383, padded), or number around 64: a request with an insert that does not fit, or more than
//! 64, passes through byte for byte as `enrich`.
//!
//! A round is one rule set (installed with `Agent::reload`, rule names reused across rounds so
//! counters and sample sequences carry on) and 10-20 requests under it.
//!
//! - `DT_PROPTEST_SEED=<n>` replays a run (the seed is printed at the start).
//! - `DT_PROPTEST_CASES=<n>` sets the number of requests (default [`DEFAULT_CASES`]).
//! - `DT_PROPTEST_ROUND=<i>` (with the seed) runs only round `i`, on a fresh agent. Sample rules
//!   then count their matches from 0, not from where the full run had them.
//! - `DT_PROPTEST_VERBOSE=1` prints every round's rules and requests as they are sent.
//! - On a failure, the round's rules and every failing request are written to a directory
//!   whose path is printed, with the replay command.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dt_agent::Stats;
use dt_tests::host_walk;
use dt_tests::model::GroupBy;
use dt_tests::proptest_gen::logs::Chunking;
use dt_tests::proptest_gen::reference::{Counts, RefState, Sender};
use dt_tests::proptest_gen::round::{self, Case, GenConfig, Round};
use dt_tests::proptest_gen::wire::{first_difference, hex};
use dt_tests::record::flatten;
use dt_tests::{
    RawClient, Received, ReceivedRecord, Receiver, TempRules, WAIT, kernel_or_skip, start_agent,
    stats_of,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

/// Generate `sample` and `redact` rules. They were gated while dt's kernel side for them was
/// being written (`dt-agent check` refused them with "action ... is not supported yet"); with
/// count and drop only, set both to false.
const SAMPLE: bool = true;
const REDACT: bool = true;

/// Share of rounds whose rule set has an `[enrich]` table.
const ENRICH: f64 = 0.3;

/// Requests per run unless `DT_PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: usize = 2000;

fn config() -> GenConfig {
    GenConfig {
        sample: SAMPLE,
        redact: REDACT,
        http_variety: true,
        pipelined: 0.1,
        malformed: 0.07,
        cases_per_round: (10, 20),
        chunked: 0.2,
        several_chunks: 0.3,
        enrich: ENRICH,
        // The requests come from this process: its pid, this host's name.
        sender: Sender::this_process(),
    }
}

const RULES_FILE: &str = "50-property.toml";

/// Receivers, and rounds sent to each before moving to the next.
const RECEIVERS: usize = 8;
const ROUNDS_PER_RECEIVER: usize = 16;

/// Straight to fd 2, so it shows even when libtest captures output.
fn say(s: &str) {
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{s}\n").as_bytes());
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else {
        v.parse()
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    dt_tests::proptest_gen::mix(t.as_nanos() as u64, std::process::id() as u64)
}

#[test]
fn random_requests_and_rules_through_the_kernel() {
    if !kernel_or_skip("random_requests_and_rules_through_the_kernel") {
        return;
    }
    let seed = env_u64("DT_PROPTEST_SEED").unwrap_or_else(fresh_seed);
    let cases = env_u64("DT_PROPTEST_CASES").map_or(DEFAULT_CASES, |n| n as usize);
    let only_round = env_u64("DT_PROPTEST_ROUND").map(|n| n as usize);
    let verbose = std::env::var_os("DT_PROPTEST_VERBOSE").is_some();
    let cfg = config();
    say(&format!(
        "property: seed {seed} ({} cases{}; replay with DT_PROPTEST_SEED={seed}); actions: count, drop{}{}",
        cases,
        only_round.map_or(String::new(), |r| format!(", round {r} only")),
        if SAMPLE { ", sample" } else { "" },
        if REDACT { ", redact" } else { "" },
    ));
    if !(SAMPLE && REDACT) {
        hint_if_sample_redact_accepted();
    }

    let started = Instant::now();
    // Several receivers (all hooked), one after the other: each one's request list, which the
    // checks copy after every round, stays short.
    let receivers: Vec<Receiver> = (0..RECEIVERS).map(|_| Receiver::start_v4()).collect();
    let ports: Vec<u16> = receivers.iter().map(Receiver::port).collect();
    let dir = TempRules::new();
    let mut state = RefState::default();
    let first = only_round.unwrap_or(0);
    let mut run = Run {
        seed,
        receivers: &receivers,
        seen: vec![(0, 0); receivers.len()],
        generation: 0,
        gen_time: Duration::ZERO,
        run_time: Duration::ZERO,
    };
    let mut index = first;
    let mut done = 0usize;
    let mut agent = None;
    let mut cov = Coverage::default();
    while done < cases {
        let rseed = round::round_seed(seed, index);
        let t0 = Instant::now();
        let r = round::round(index, rseed, done, &cfg, &mut state);
        run.gen_time += t0.elapsed();
        // The host walker, both ways, on every request of the round: field by field and with
        // the record fast path the kernel takes. They must agree on everything.
        let compiled = host_walk::compile_rules(&r.toml);
        for c in r.conns.iter().flat_map(|conn| &conn.cases) {
            match host_walk::both_ways(&compiled, &c.request.payload) {
                Ok((slow, fast, whole)) => {
                    cov.steps_slow += slow as u64;
                    cov.steps_fast += fast as u64;
                    cov.records_whole += whole as u64;
                }
                Err(e) => panic!(
                    "round {index} (seed {rseed}, replay with DT_PROPTEST_SEED={seed} DT_PROPTEST_ROUND={index}), case {}: {e}",
                    c.id
                ),
            }
        }
        if verbose {
            say(&format!("round {index} (seed {rseed}):\n{}", r.toml));
            for (ci, conn) in r.conns.iter().enumerate() {
                for c in &conn.cases {
                    say(&format!(
                        "  connection {ci}{} case {}: {} body bytes, {} records, {} dropped, cuts {:?}{}",
                        if conn.pipelined.is_some() {
                            " (pipelined)"
                        } else {
                            ""
                        },
                        c.id,
                        c.request.payload.len(),
                        c.expect.records,
                        c.expect.records_dropped,
                        c.cuts,
                        c.malformed
                            .as_ref()
                            .map_or(String::new(), |m| format!(", MALFORMED {m}"))
                    ));
                }
            }
        }
        dir.write(RULES_FILE, &r.toml);
        match &mut agent {
            None => {
                let a = start_agent(&dir, &ports);
                run.generation = a.generation();
                agent = Some(a);
            }
            Some(a) => {
                let g = a.reload(dir.path()).unwrap_or_else(|e| {
                    panic!(
                        "round {index} (seed {rseed}): reload refused the rule set: {e:#}\n{}",
                        r.toml
                    )
                });
                assert_eq!(g, run.generation + 1, "generation after reload");
                run.generation = g;
            }
        }
        let agent = agent.as_ref().expect("agent started");
        let before = stats_of(agent);
        let t0 = Instant::now();
        run.round(&r, agent, &before, &state);
        run.run_time += t0.elapsed();
        done += r.n_cases();
        cov.add(&r);
        index += 1;
        if only_round.is_some() {
            break;
        }
    }
    say(&format!(
        "property: seed {seed}: {} rounds, {} connections, in {:.1?} (generating {:.1?}, sending and checking {:.1?})\n  {}",
        index - first,
        run.seen.iter().map(|s| s.1).sum::<usize>(),
        started.elapsed(),
        run.gen_time,
        run.run_time,
        cov.summary(),
    ));
}

/// What a run exercised.
#[derive(Default)]
struct Coverage {
    requests: usize,
    records: u64,
    dropped: u64,
    attrs_removed: usize,
    bodies_masked: usize,
    bodies_replaced: usize,
    edited: usize,
    unchanged: usize,
    emptied: usize,
    /// Walked requests that still hold invalid UTF-8 when they arrive.
    bad_utf8: usize,
    /// Defects put in a message at this depth (the request is 0).
    defect_depths: std::collections::BTreeMap<usize, usize>,
    malformed: std::collections::BTreeMap<String, usize>,
    pipelined: usize,
    /// Chunked requests: of one data chunk (walked), of several.
    one_chunk: usize,
    several_chunks: usize,
    head_cuts: usize,
    body_cuts: usize,
    rules: std::collections::BTreeMap<&'static str, usize>,
    /// Rules with each newer condition or grouping.
    conditions: std::collections::BTreeMap<&'static str, usize>,
    /// Rounds with an `[enrich]` table, by the attributes it lists (in the kernel's order).
    enrich_rounds: std::collections::BTreeMap<String, usize>,
    /// Requests `[enrich]` edited, the ResourceLogs it inserted a resource into, the bytes.
    enriched: usize,
    enriched_resource_logs: usize,
    enrich_bytes: u64,
    /// Host walk steps over every request: field by field, and with the record fast path.
    steps_slow: u64,
    steps_fast: u64,
    records_whole: u64,
}

impl Coverage {
    fn add(&mut self, r: &Round) {
        for rule in &r.rules {
            *self.rules.entry(rule.action.as_str()).or_default() += 1;
            let mut cond = |what: &'static str, on: bool| {
                if on {
                    *self.conditions.entry(what).or_default() += 1;
                }
            };
            cond("event_name", rule.event_name.is_some());
            cond("typed attributes", !rule.typed_attributes.is_empty());
            cond("group_by", rule.group_by.is_some());
            cond(
                "group_by with max_groups < 64",
                rule.group_by
                    .as_ref()
                    .is_some_and(|g| g.max() < GroupBy::DEFAULT_MAX_GROUPS),
            );
        }
        for conn in &r.conns {
            self.pipelined += conn.pipelined.is_some() as usize;
        }
        if let Some(e) = &r.enrich {
            let names: Vec<&str> = dt_tests::model::ENRICH_ATTRS
                .iter()
                .copied()
                .filter(|n| e.lists(n))
                .collect();
            *self.enrich_rounds.entry(names.join("+")).or_default() += 1;
        }
        for c in r.cases() {
            self.requests += 1;
            self.enriched += (c.expect.enriched > 0) as usize;
            self.enriched_resource_logs += c.expect.enriched;
            self.enrich_bytes += c.expect.inserted_bytes;
            match &c.chunking {
                Some(Chunking::One { .. }) => self.one_chunk += 1,
                Some(Chunking::Several { .. }) => self.several_chunks += 1,
                None => {}
            }
            self.records += c.expect.records;
            self.dropped += c.expect.records_dropped;
            self.attrs_removed += c.expect.attrs_removed;
            self.bodies_masked += c.expect.bodies_masked;
            self.bodies_replaced += c.expect.bodies_replaced;
            self.head_cuts += c.cuts.iter().filter(|&&x| x < c.request.head_len).count();
            self.body_cuts += c.cuts.iter().filter(|&&x| x >= c.request.head_len).count();
            match &c.malformed {
                Some(m) => {
                    // "reason: how" (a defect's kind, or "deep").
                    let kind: Vec<&str> = m.splitn(3, ':').take(2).map(str::trim).collect();
                    *self.malformed.entry(kind.join(": ")).or_default() += 1;
                    if let Some(d) = m
                        .split_once(" at depth ")
                        .and_then(|(_, d)| d.split(' ').next()?.parse().ok())
                    {
                        *self.defect_depths.entry(d).or_default() += 1;
                    }
                }
                None if c.expect.logs.is_none() => {
                    self.bad_utf8 += 1;
                    self.edited += (c.expect.body != c.request.payload) as usize;
                }
                None if c.expect.body != c.request.payload => {
                    self.edited += 1;
                    if c.expect.records > 0 && c.expect.records == c.expect.records_dropped {
                        self.emptied += 1;
                    }
                }
                None => self.unchanged += 1,
            }
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} requests: {} edited ({} emptied of all their records), {} unchanged, {} arriving with invalid UTF-8, \
             {} passed through {:?}, defects by depth {:?}; \
             {} records, {} dropped, {} attributes removed, {} bodies masked ({} replaced whole); rules {:?}, of which {:?}; \
             {} rounds with [enrich] {:?}: {} requests enriched ({} ResourceLogs, {} bytes inserted); \
             {} pipelined connections; {} chunked requests of one data chunk, {} of several; \
             {} writes cut in heads, {} in bodies; host walk both ways: {} steps field by field, {} with the record fast path ({} records taken whole)",
            self.requests,
            self.edited,
            self.emptied,
            self.unchanged,
            self.bad_utf8,
            self.malformed.values().sum::<usize>(),
            self.malformed,
            self.defect_depths,
            self.records,
            self.dropped,
            self.attrs_removed,
            self.bodies_masked,
            self.bodies_replaced,
            self.rules,
            self.conditions,
            self.enrich_rounds.values().sum::<usize>(),
            self.enrich_rounds,
            self.enriched,
            self.enriched_resource_logs,
            self.enrich_bytes,
            self.pipelined,
            self.one_chunk,
            self.several_chunks,
            self.head_cuts,
            self.body_cuts,
            self.steps_slow,
            self.steps_fast,
            self.records_whole,
        )
    }
}

/// Tells whether `dt-agent`'s compiler takes sample and redact (then SAMPLE and REDACT should be
/// on).
fn hint_if_sample_redact_accepted() {
    let dir = TempRules::new();
    dir.write(
        "probe.toml",
        "[[rule]]\nname = \"s\"\naction = \"sample\"\nkeep_one_in = 2\n\n[[rule]]\nname = \"r\"\naction = \"redact\"\nmask_body = true\n",
    );
    let mut slots = Default::default();
    if dt_agent::agent::compile_dir(dir.path(), &[], &mut slots).is_ok() {
        say(
            "property: NOTE: dt accepts sample and redact rules; SAMPLE and REDACT in tests/tests/property.rs can be on",
        );
    }
}

struct Run<'a> {
    seed: u64,
    receivers: &'a [Receiver],
    /// Requests and connections each receiver had before this round.
    seen: Vec<(usize, usize)>,
    generation: u64,
    /// Time spent generating (with the reference), and sending and checking.
    gen_time: Duration,
    run_time: Duration,
}

/// What the client saw of one connection: each response's status, and the agent's counters
/// after each response (after the last one only, when pipelined).
struct ConnResult {
    statuses: Vec<u16>,
    stats: Vec<Option<Stats>>,
}

fn send_conn(addr: SocketAddr, conn: &round::ConnPlan, agent: &dt_agent::Agent) -> ConnResult {
    let mut client = RawClient::connect(addr);
    let mut statuses = Vec::new();
    let mut stats = Vec::new();
    match &conn.pipelined {
        None => {
            for c in &conn.cases {
                let mut chunks = Vec::new();
                let mut prev = 0;
                for &x in c.cuts.iter().chain(std::iter::once(&c.request.len())) {
                    chunks.push(&c.request.bytes[prev..x]);
                    prev = x;
                }
                client.write_chunks(&chunks, Duration::from_millis(c.delay_ms));
                statuses.push(client.read_response().status);
                // The kernel counts a request before it sends it on: with its response here,
                // its counts are in.
                stats.push(Some(stats_of(agent)));
            }
        }
        Some(cuts) => {
            let all: Vec<u8> = conn
                .cases
                .iter()
                .flat_map(|c| c.request.bytes.iter().copied())
                .collect();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for &x in cuts.iter().chain(std::iter::once(&all.len())) {
                chunks.push(&all[prev..x]);
                prev = x;
            }
            client.write_chunks(&chunks, Duration::ZERO);
            for _ in &conn.cases {
                statuses.push(client.read_response().status);
                stats.push(None);
            }
            *stats.last_mut().expect("a request") = Some(stats_of(agent));
        }
    }
    client.finish();
    ConnResult { statuses, stats }
}

/// How much the counters must move over some requests.
#[derive(Default)]
struct Delta {
    requests: u64,
    /// Requests dt walks (all but those of several chunks).
    log_requests: u64,
    /// Requests passed through, per reason.
    passthrough: BTreeMap<&'static str, u64>,
    records: u64,
    records_dropped: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// ResourceLogs `[enrich]` could not insert into, in the requests walked.
    edit_failures: u64,
    rules: BTreeMap<String, Counts>,
}

impl Delta {
    fn add(&mut self, c: &Case, bytes_out: u64) {
        self.requests += 1;
        self.log_requests += c.expect.log_request() as u64;
        if c.expect.log_request() && c.expect.passthrough.is_none() {
            self.edit_failures += c.expect.edit_failures;
        }
        if let Some(reason) = c.expect.passthrough {
            *self.passthrough.entry(reason).or_default() += 1;
        }
        self.records += c.expect.records;
        self.records_dropped += c.expect.records_dropped;
        self.bytes_in += c.request.len() as u64;
        self.bytes_out += bytes_out;
        for (name, d) in &c.expect.counts {
            let e = self.rules.entry(name.clone()).or_default();
            e.matched += d.matched;
            e.kept += d.kept;
            e.dropped += d.dropped;
            e.dropped_bytes += d.dropped_bytes;
            e.redacted += d.redacted;
        }
    }

    /// Differences between this and the counters' move from `before` to `after`.
    fn check(&self, before: &Stats, after: &Stats, problems: &mut Vec<String>) {
        let (b, a) = (&before.totals, &after.totals);
        let mut want = |what: &str, got: u64, want: u64| {
            if got != want {
                problems.push(format!("totals.{what} moved by {got}, want {want}"));
            }
        };
        want("requests", a.requests - b.requests, self.requests);
        want(
            "log_requests",
            a.log_requests - b.log_requests,
            self.log_requests,
        );
        want("records", a.records - b.records, self.records);
        want(
            "records_dropped",
            a.records_dropped - b.records_dropped,
            self.records_dropped,
        );
        want("bytes_in", a.bytes_in - b.bytes_in, self.bytes_in);
        want("bytes_out", a.bytes_out - b.bytes_out, self.bytes_out);
        want(
            "edit_failures",
            a.edit_failures - b.edit_failures,
            self.edit_failures,
        );
        for (reason, v) in &a.passthrough {
            let d = v - b.passthrough.get(reason).copied().unwrap_or(0);
            let w = self.passthrough.get(reason.as_str()).copied().unwrap_or(0);
            want(&format!("passthrough.{reason}"), d, w);
        }
        for (reason, w) in &self.passthrough {
            if !a.passthrough.contains_key(*reason) {
                want(&format!("passthrough.{reason}"), 0, *w);
            }
        }
        // Every reason is listed, 0 when unused (`enrich` among them).
        if !a.passthrough.contains_key("enrich") {
            problems.push("totals.passthrough has no \"enrich\" key".into());
        }
        for r in &after.rules {
            let old = before.rule(&r.name);
            let got = Counts {
                matched: r.matched - old.map_or(0, |o| o.matched),
                kept: r.kept - old.map_or(0, |o| o.kept),
                dropped: r.dropped - old.map_or(0, |o| o.dropped),
                dropped_bytes: r.dropped_bytes - old.map_or(0, |o| o.dropped_bytes),
                redacted: r.redacted - old.map_or(0, |o| o.redacted),
            };
            let exp = self.rules.get(&r.name).copied().unwrap_or_default();
            if got != exp {
                problems.push(format!(
                    "rule {}: (matched, kept, dropped, dropped_bytes, redacted) moved by {}, want {}",
                    r.name,
                    fmt_counts(&got),
                    fmt_counts(&exp)
                ));
            }
        }
    }
}

fn fmt_counts(c: &Counts) -> String {
    format!(
        "({}, {}, {}, {}, {})",
        c.matched, c.kept, c.dropped, c.dropped_bytes, c.redacted
    )
}

impl Run<'_> {
    fn round(&mut self, r: &Round, agent: &dt_agent::Agent, before: &Stats, state: &RefState) {
        // Send everything; a hang or a broken response is reported with the round's details.
        let which = (r.index / ROUNDS_PER_RECEIVER) % self.receivers.len();
        let receiver = &self.receivers[which];
        let (requests_seen, conns_seen) = self.seen[which];
        let addr = receiver.addr();
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.conns
                .iter()
                .map(|c| send_conn(addr, c, agent))
                .collect::<Vec<_>>()
        }));
        let results = match sent {
            Ok(x) => x,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let cases: Vec<&Case> = r.cases().collect();
                self.fail(r, &[format!("sending failed: {msg}")], &cases, &[]);
            }
        };
        let n = r.n_cases();
        let received = receiver.wait_for(requests_seen + n, WAIT);
        let conn_bytes = receiver.connection_bytes();
        let stats = stats_of(agent);

        let mut problems = Vec::new();
        let mut bad: Vec<&Case> = Vec::new();
        let mut got_bodies: Vec<(usize, Vec<u8>)> = Vec::new();
        if received.len() != requests_seen + n {
            problems.push(format!(
                "the receiver got {} requests in this round, {n} were sent",
                received.len() - requests_seen
            ));
        }
        if conn_bytes.len() != conns_seen + r.conns.len() {
            problems.push(format!(
                "the receiver saw {} connections in this round, {} were made",
                conn_bytes.len() - conns_seen,
                r.conns.len()
            ));
        }
        let mut ri = requests_seen;
        let mut prev_stats = before.clone();
        let mut round_delta = Delta::default();
        for (ci, (conn, res)) in r.conns.iter().zip(&results).enumerate() {
            let raw = conn_bytes.get(conns_seen + ci).cloned().unwrap_or_default();
            let mut off = 0usize;
            let mut delta = Delta::default();
            let mut since: Vec<&Case> = Vec::new();
            for (k, c) in conn.cases.iter().enumerate() {
                let mut p = Vec::new();
                if res.statuses[k] != c.expect.status
                    && Some(res.statuses[k]) != c.expect.alt.as_ref().map(|a| a.0)
                {
                    p.push(format!(
                        "status {} (the receiver answers 400 when the body does not decode), want {}",
                        res.statuses[k], c.expect.status
                    ));
                }
                if let Some(rcv) = received.get(ri) {
                    check_received(c, rcv, &mut p);
                    got_bodies.push((c.id, rcv.body.clone()));
                }
                // The exact bytes on the wire: head (Content-Length rewritten), then body.
                // Requests are delimited by what arrived (head, then its Content-Length), so a
                // wrong one does not throw off the ones after it.
                let start = off;
                let (head_end, body_end) = frame(&raw, off);
                let (head, body) = (&raw[off..head_end], &raw[head_end..body_end]);
                if !c.expect.heads.iter().any(|h| h == head) {
                    p.push(format!(
                        "head on the wire differs:\n      want {:?}\n      got  {:?}",
                        String::from_utf8_lossy(&c.expect.heads[0]),
                        String::from_utf8_lossy(head)
                    ));
                }
                let (want_wire, either) = c.expect.wire();
                if let Some(d) = first_difference(want_wire, &either, body) {
                    p.push(format!(
                        "{} on the wire differs from the expected bytes at offset {d} ({} bytes, want {}, sent {})",
                        if c.chunking.is_some() {
                            "chunked body (framing included)"
                        } else {
                            "body"
                        },
                        body.len(),
                        want_wire.len(),
                        c.request.len() - c.request.head_len
                    ));
                }
                off = body_end;
                delta.add(c, (off - start) as u64);
                round_delta.add(c, (off - start) as u64);
                since.push(c);
                // The counters, after every response (after the last one when pipelined).
                if let Some(now) = &res.stats[k] {
                    let mut q = Vec::new();
                    delta.check(&prev_stats, now, &mut q);
                    if !q.is_empty() {
                        let ids: Vec<String> = since.iter().map(|c| c.id.to_string()).collect();
                        p.push(format!(
                            "counters after case(s) {}:\n      {}",
                            ids.join(", "),
                            q.join("\n      ")
                        ));
                        bad.extend(since.iter().filter(|x| x.id != c.id));
                    }
                    prev_stats = now.clone();
                    delta = Delta::default();
                    since.clear();
                }
                if !p.is_empty() {
                    problems.push(format!("case {}:\n    {}", c.id, p.join("\n    ")));
                    bad.push(c);
                }
                ri += 1;
            }
            if off < raw.len() {
                problems.push(format!(
                    "connection {ci}: {} bytes more than expected on the wire",
                    raw.len() - off
                ));
            }
        }

        // The whole round, and every rule's counters over the whole run.
        let mut q = Vec::new();
        round_delta.check(before, &stats, &mut q);
        if stats.totals.in_flight != 0 {
            q.push(format!("totals.in_flight {}", stats.totals.in_flight));
        }
        check_rules(r, &stats, state, &mut q);
        if !q.is_empty() {
            problems.push(format!("over the round:\n    {}", q.join("\n    ")));
        }
        if !problems.is_empty() {
            if bad.is_empty() {
                bad = r.cases().collect();
            }
            bad.sort_by_key(|c| c.id);
            bad.dedup_by_key(|c| c.id);
            self.fail(r, &problems, &bad, &got_bodies);
        }
        self.seen[which] = (requests_seen + n, conns_seen + r.conns.len());
    }

    fn fail(&self, r: &Round, problems: &[String], cases: &[&Case], got: &[(usize, Vec<u8>)]) -> ! {
        let dir = std::env::temp_dir().join(format!("dt-property-{}-round{}", self.seed, r.index));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("rules.toml"), &r.toml);
        let mut summary = String::new();
        for c in cases {
            let _ = std::fs::write(dir.join(format!("case{}.http", c.id)), &c.request.bytes);
            let _ = std::fs::write(
                dir.join(format!("case{}.expected-body", c.id)),
                &c.expect.body,
            );
            if let Some((_, b)) = got.iter().find(|(id, _)| *id == c.id) {
                let _ = std::fs::write(dir.join(format!("case{}.received-body", c.id)), b);
            }
            summary += &format!(
                "\n  case {}: {} body bytes, head {} bytes, cuts {:?}{}{}",
                c.id,
                c.request.payload.len(),
                c.request.head_len,
                c.cuts,
                c.malformed
                    .as_ref()
                    .map_or(String::new(), |m| format!(", MALFORMED: {m}")),
                if c.request.payload.len() <= 512 {
                    format!("\n    body hex: {}", hex(&c.request.payload))
                } else {
                    String::new()
                }
            );
            if c.malformed.is_none() {
                let dropped: Vec<String> = c
                    .expect
                    .dropped_by
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.as_ref().map(|d| format!("{i}:{d}")))
                    .collect();
                summary += &format!(
                    "\n    reference: {} records, dropped [{}]{}",
                    c.expect.dropped_by.len(),
                    dropped.join(" "),
                    if c.expect.enriched > 0 {
                        format!(
                            ", [enrich] inserted {} bytes in {} ResourceLogs",
                            c.expect.inserted_bytes, c.expect.enriched
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
        let mut all = String::new();
        for (ci, conn) in r.conns.iter().enumerate() {
            for c in &conn.cases {
                all += &format!(
                    "\n  connection {ci}{}: case {}: {} records, {} dropped{}",
                    if conn.pipelined.is_some() {
                        " (pipelined)"
                    } else {
                        ""
                    },
                    c.id,
                    c.expect.records,
                    c.expect.records_dropped,
                    c.malformed
                        .as_ref()
                        .map_or(String::new(), |m| format!(", MALFORMED ({m})"))
                );
            }
        }
        panic!(
            "property: round {} failed (run seed {}, round seed {}).\n\
             Replay: DT_PROPTEST_SEED={} DT_PROPTEST_ROUND={} cargo test -p dt-tests --test property -- --nocapture\n\
             (or the whole run: DT_PROPTEST_SEED={})\n\
             Files (rules, and each case's request, expected and received body): {}\n\
             Rules:\n{}\n\
             The round's requests, in order:{}\n\
             Problems:\n  {}\n\
             Cases with problems:{}",
            r.index,
            self.seed,
            r.seed,
            self.seed,
            r.index,
            self.seed,
            dir.display(),
            r.toml,
            all,
            problems.join("\n  "),
            summary
        );
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the request starting at `off` in a connection's bytes ends its head and its body (by
/// its Content-Length, or its chunk framing when `Transfer-Encoding: chunked`), clamped to what
/// is there.
fn frame(raw: &[u8], off: usize) -> (usize, usize) {
    let Some(e) = find(&raw[off..], b"\r\n\r\n") else {
        return (raw.len(), raw.len());
    };
    let head_end = off + e + 4;
    let head = String::from_utf8_lossy(&raw[off..head_end]);
    let chunked = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        });
    if chunked {
        return (head_end, chunked_end(raw, head_end));
    }
    let len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (head_end, (head_end + len).min(raw.len()))
}

/// Where the chunked body starting at `pos` ends (after its last chunk and trailer section),
/// clamped to what is there.
fn chunked_end(raw: &[u8], mut pos: usize) -> usize {
    loop {
        let Some(e) = find(&raw[pos..], b"\r\n") else {
            return raw.len();
        };
        let line = &raw[pos..pos + e];
        let digits: Vec<u8> = line
            .iter()
            .copied()
            .take_while(u8::is_ascii_hexdigit)
            .collect();
        let size = u64::from_str_radix(std::str::from_utf8(&digits).unwrap_or("0"), 16)
            .unwrap_or(u64::MAX)
            .min(raw.len() as u64) as usize;
        pos += e + 2;
        if size == 0 {
            // The trailer section: lines up to an empty one.
            loop {
                let Some(e) = find(&raw[pos..], b"\r\n") else {
                    return raw.len();
                };
                pos += e + 2;
                if e == 0 {
                    return pos;
                }
            }
        }
        pos += size + 2;
        if pos >= raw.len() {
            return raw.len();
        }
    }
}

/// What the receiver decoded against the reference.
fn check_received(c: &Case, rcv: &Received, p: &mut Vec<String>) {
    if rcv.path != "/v1/logs" || rcv.method != "POST" {
        p.push(format!("arrived as {} {}", rcv.method, rcv.path));
        return;
    }
    if let Some(cl) = rcv.header("content-length")
        && cl.trim().parse::<usize>().ok() != Some(rcv.body.len())
    {
        p.push(format!(
            "Content-Length {cl} but {} body bytes",
            rcv.body.len()
        ));
    }
    if let Some(reason) = c.expect.passthrough {
        if rcv.body != c.request.payload {
            p.push(format!(
                "request to pass through ({reason}) changed: {} bytes sent, {} arrived",
                c.request.payload.len(),
                rcv.body.len()
            ));
        }
        return;
    }
    // Invalid UTF-8 only in strings dt may mask or not: what it decodes if dt masked them.
    if let Some((_, alt)) = &c.expect.alt
        && rcv.logs.is_some() == alt.is_some()
        && c.expect.logs.is_some() != alt.is_some()
    {
        if let (Some(want), Some(got)) = (alt, &rcv.logs)
            && want != got
        {
            p.push(describe_difference(want, got));
        }
        return;
    }
    match (&c.expect.logs, &rcv.logs) {
        // Invalid UTF-8 left in a string: the receiver cannot decode it (the bytes on the wire
        // are checked exactly).
        (None, None) => {}
        (None, Some(_)) => p.push("the receiver decoded a request with invalid UTF-8".into()),
        (Some(_), None) => p.push(format!(
            "the receiver could not decode it: {:?}",
            rcv.decode_error
        )),
        (Some(want), Some(got)) if want != got => p.push(describe_difference(want, got)),
        _ => {}
    }
}

fn describe_difference(want: &ExportLogsServiceRequest, got: &ExportLogsServiceRequest) -> String {
    let w = flatten(want);
    let g = flatten(got);
    let shape = |r: &ExportLogsServiceRequest| {
        r.resource_logs
            .iter()
            .map(|rl| {
                rl.scope_logs
                    .iter()
                    .map(|s| s.log_records.len())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let mut msg = format!(
        "decoded request differs from the reference: {} records expected, {} arrived\n      records per scope, expected {:?}\n      arrived {:?}",
        w.len(),
        g.len(),
        shape(want),
        shape(got)
    );
    if let Some(i) = (0..w.len().max(g.len())).find(|&i| w.get(i) != g.get(i)) {
        msg += &format!(
            "\n      first difference at kept record {i}:\n      want {}\n      got  {}",
            short_record(w.get(i)),
            short_record(g.get(i))
        );
        return msg;
    }
    // Same flat view: the difference is in what it leaves out.
    let records = |r: &ExportLogsServiceRequest| {
        r.resource_logs
            .iter()
            .flat_map(|rl| rl.scope_logs.iter().flat_map(|s| s.log_records.clone()))
            .collect::<Vec<_>>()
    };
    let (wr, gr) = (records(want), records(got));
    match (0..wr.len().max(gr.len())).find(|&i| wr.get(i) != gr.get(i)) {
        Some(i) => {
            msg += &format!(
                "\n      first different LogRecord {i}:\n      want {:?}\n      got  {:?}",
                wr.get(i),
                gr.get(i)
            )
        }
        None => msg += "\n      (records equal: resources or scopes differ)",
    }
    msg
}

/// A string cut to `n` characters.
fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(n).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

fn short_record(r: Option<&ReceivedRecord>) -> String {
    let Some(r) = r else {
        return "none".into();
    };
    let attrs: Vec<String> = r
        .attributes
        .iter()
        .map(|(k, v)| format!("{}={}", short(k, 20), short(v, 20)))
        .collect();
    format!(
        "service {}, scope {}, severity {}, body {}, attributes [{}]",
        short(&r.service, 20),
        short(&r.scope, 20),
        r.severity_number,
        r.body
            .as_deref()
            .map_or("(not a string)".into(), |b| short(b, 40)),
        attrs.join(", ")
    )
}

/// Every rule's counters over the whole run, and which rules are active.
fn check_rules(r: &Round, after: &Stats, state: &RefState, problems: &mut Vec<String>) {
    let active: BTreeSet<&str> = r.rules.iter().map(|x| x.name.as_str()).collect();
    for (name, w) in &state.counts {
        let Some(g) = after.rule(name) else {
            problems.push(format!("rule {name} not listed in stats"));
            continue;
        };
        let got = Counts {
            matched: g.matched,
            kept: g.kept,
            dropped: g.dropped,
            dropped_bytes: g.dropped_bytes,
            redacted: g.redacted,
        };
        if got != *w {
            problems.push(format!(
                "rule {name} over the run: (matched, kept, dropped, dropped_bytes, redacted) = {}, want {}",
                fmt_counts(&got),
                fmt_counts(w)
            ));
        }
        if g.active != active.contains(name.as_str()) {
            problems.push(format!(
                "rule {name}: active {} want {}",
                g.active, !g.active
            ));
        }
        if Some(g.action.as_str()) != state.actions.get(name).copied() {
            problems.push(format!("rule {name}: action {:?}", g.action));
        }
    }
    if after.rules.len() != state.counts.len() {
        problems.push(format!(
            "stats list {} rules, the run installed {}",
            after.rules.len(),
            state.counts.len()
        ));
    }
    check_groups(after, state, problems);
}

/// Each rule's `"groups"` in `stats --json` (the Stats document as JSON: whatever the agent's
/// type calls the field): group → count, `None` when the rule has no `groups`, `Err` when they
/// are not a map of counts.
fn groups_in_stats(
    after: &Stats,
) -> BTreeMap<String, Result<Option<BTreeMap<String, u64>>, String>> {
    let json = serde_json::to_value(after).expect("Stats as JSON");
    let mut out = BTreeMap::new();
    for rule in json["rules"].as_array().into_iter().flatten() {
        let name = rule["name"].as_str().unwrap_or_default().to_string();
        let groups = match rule.get("groups") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_u64()
                        .map(|n| (k.clone(), n))
                        .ok_or_else(|| format!("group {k:?} = {v}"))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(other) => Err(format!("groups = {other}")),
        };
        out.insert(name, groups);
    }
    out
}

/// A group map shortened for a message: at most 24 groups, long names cut.
fn fmt_groups(g: &BTreeMap<String, u64>) -> String {
    let mut parts: Vec<String> = g
        .iter()
        .take(24)
        .map(|(k, n)| format!("{}: {n}", short(k, 40)))
        .collect();
    if g.len() > 24 {
        parts.push(format!("... ({} groups)", g.len()));
    }
    format!("{{{}}}", parts.join(", "))
}

/// Every `group_by` rule's groups over the whole run against the reference (a group absent on
/// either side counts 0); rules without `group_by` have no group above 0.
fn check_groups(after: &Stats, state: &RefState, problems: &mut Vec<String>) {
    let got_all = groups_in_stats(after);
    for name in state.counts.keys() {
        let grouped = state.group_by.get(name);
        let got = match got_all.get(name) {
            None => continue, // "not listed in stats", reported above
            Some(Err(e)) => {
                problems.push(format!("rule {name}: groups are not counts: {e}"));
                continue;
            }
            Some(Ok(g)) => g.clone(),
        };
        let want = state.groups(name);
        if grouped.is_some() && got.is_none() && !want.is_empty() {
            problems.push(format!(
                "rule {name} (group_by {}): no \"groups\" in stats, want {}",
                grouped.map(|g| g.dim.as_text()).unwrap_or_default(),
                fmt_groups(&want)
            ));
            continue;
        }
        let got = got.unwrap_or_default();
        let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
        let diff: Vec<String> = keys
            .into_iter()
            .filter_map(|k| {
                let (w, g) = (
                    want.get(k).copied().unwrap_or(0),
                    got.get(k).copied().unwrap_or(0),
                );
                (w != g).then(|| format!("{}: {g}, want {w}", short(k, 40)))
            })
            .collect();
        if diff.is_empty() {
            continue;
        }
        match grouped {
            Some(g) => problems.push(format!(
                "rule {name} (group_by {}, max_groups {}): groups differ over the run: {}\n      got  {}\n      want {}",
                g.dim.as_text(),
                g.max(),
                diff.iter().take(12).cloned().collect::<Vec<_>>().join(", "),
                fmt_groups(&got),
                fmt_groups(&want)
            )),
            None => problems.push(format!(
                "rule {name} has no group_by but groups {}",
                fmt_groups(&got)
            )),
        }
    }
}

/// The property test's first find, minimised: a request that passes through as malformed must
/// not use up a sample rule's matches. Ten times: a malformed request (one record, then a tag
/// with field number 0), then the same request without the bad tag. The valid requests' records
/// are matches 0..=9 of `keep_one_in = 2` when the malformed ones take no turns: 0, 2, 4, 6 and 8
/// are kept. (README, "Sample": the kept count is exactly ⌈matched/N⌉; with the malformed
/// requests taking every other turn, none would be.)
#[test]
fn sample_sequence_ignores_malformed_requests() {
    if !kernel_or_skip("sample_sequence_ignores_malformed_requests") {
        return;
    }
    if !SAMPLE {
        return;
    }
    let rules = TempRules::with_files(&[(
        "r.toml",
        "[[rule]]\nname = \"s\"\naction = \"sample\"\nkeep_one_in = 2\n",
    )]);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&rules, &[receiver.port()]);
    // ResourceLogs { ScopeLogs { LogRecord { severity_number: 9 } } }
    let good = vec![0x0a, 0x06, 0x12, 0x04, 0x12, 0x02, 0x10, 0x09];
    let mut bad = good.clone();
    bad.extend_from_slice(&[0x00, 0x00]);
    let mut client = RawClient::connect(receiver.addr());
    for _ in 0..10 {
        for body in [&bad, &good] {
            let req = dt_tests::HttpRequestBuilder::logs(body.clone()).build();
            client.roundtrip(&req, &dt_tests::Split::Whole);
        }
    }
    client.finish();
    let got = receiver.wait_for(20, WAIT);
    let stats = stats_of(&agent);
    let s = stats.rule("s").expect("rule s listed");
    let arrived: usize = got
        .iter()
        .skip(1)
        .step_by(2)
        .map(|r| r.records().len())
        .sum();
    assert_eq!(
        stats.totals.passthrough.get("malformed"),
        Some(&10),
        "the malformed requests pass through"
    );
    assert!(
        got.iter().step_by(2).all(|r| r.body == bad),
        "malformed requests arrive byte for byte"
    );
    assert_eq!(
        (s.matched, s.kept, s.dropped, arrived),
        (10, 5, 5, 5),
        "sample rule s (matched, kept, dropped) and records that arrived: the malformed requests \
         took turns of the one-in-2 sequence"
    );
}

/// Sample is exact under concurrency. Three connections send valid requests of INFO
/// records through a `keep_one_in = 3` rule while three others send malformed requests that
/// begin with INFO records (evaluated, then abandoned at a truncated ResourceLogs). Abandoned
/// walks take no sample numbers, so over every CPU the kept count is exactly ⌈matched/3⌉ and
/// the receiver gets exactly the kept records.
#[test]
fn sample_is_exact_with_concurrent_abandoned_walks() {
    if !kernel_or_skip("sample_is_exact_with_concurrent_abandoned_walks") {
        return;
    }
    let rules = TempRules::with_files(&[(
        "r.toml",
        "[[rule]]\nname = \"s\"\naction = \"sample\"\nkeep_one_in = 3\n[rule.match]\nseverity = \"INFO\"\n",
    )]);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&rules, &[receiver.port()]);
    // A ScopeLogs of `n` INFO records, in one ResourceLogs.
    let records = |n: usize| -> Vec<u8> {
        let rec = [0x12u8, 0x02, 0x10, 0x09];
        let scope: Vec<u8> = rec.iter().copied().cycle().take(rec.len() * n).collect();
        let mut rl = vec![0x12];
        prost::encoding::encode_varint(scope.len() as u64, &mut rl);
        rl.extend_from_slice(&scope);
        rl
    };
    let resource_logs = |inner: &[u8]| -> Vec<u8> {
        let mut out = vec![0x0a];
        prost::encoding::encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(inner);
        out
    };
    const SENDS: usize = 150;
    let good_sizes = [7usize, 11, 13];
    let good_counts: Vec<usize> = good_sizes.iter().map(|n| n * SENDS).collect();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let addr = receiver.addr();
            let good = t < 3;
            let body = if good {
                resource_logs(&records(good_sizes[t]))
            } else {
                // INFO records, then a second ResourceLogs whose length runs past the end.
                let mut b = resource_logs(&records(17));
                b.extend_from_slice(&[0x0a, 0x7f, 0x12]);
                b
            };
            std::thread::spawn(move || {
                let mut client = RawClient::connect(addr);
                for _ in 0..SENDS {
                    let req = dt_tests::HttpRequestBuilder::logs(body.clone()).build();
                    client.roundtrip(&req, &dt_tests::Split::Whole);
                }
                client.finish();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread");
    }
    let got = receiver.wait_for(6 * SENDS, WAIT);
    let stats = stats_of(&agent);
    let s = stats.rule("s").expect("rule s listed");
    let matched: u64 = good_counts.iter().sum::<usize>() as u64;
    let arrived: usize = got
        .iter()
        .filter(|r| r.body.last() != Some(&0x12))
        .map(|r| r.records().len())
        .sum();
    assert_eq!(
        stats.totals.passthrough.get("malformed"),
        Some(&(3 * SENDS as u64)),
        "the malformed requests pass through"
    );
    assert_eq!(
        (s.matched, s.kept, s.dropped, arrived as u64),
        (
            matched,
            matched.div_ceil(3),
            matched - matched.div_ceil(3),
            matched.div_ceil(3)
        ),
        "sample rule s (matched, kept, dropped) and records that arrived"
    );
}
