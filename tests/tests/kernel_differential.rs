//! The kernel against the host walker, byte for byte, at scale: random rule sets (the property
//! test's generator, `[enrich]` included) and random requests, most of them then mutated (bytes
//! flipped, cut short, spliced, stuffed), sent through the real sk_msg path; every request that
//! arrives must be exactly what dt's walker on the host makes of it (its edited bytes when it
//! walks it, the bytes as sent when it passes it through). The host walk also runs both ways
//! (field by field and with the fast path), which must agree.
//!
//! CI runs a bounded slice (`DT_KDIFF_CASES`, default 1,500); long runs go in FUZZING.md. Replay
//! a run with `DT_KDIFF_SEED`.

use std::time::{Duration, Instant};

use dt_tests::agent::start_agent;
use dt_tests::client::{RawClient, Split};
use dt_tests::host_walk;
use dt_tests::http::post_logs;
use dt_tests::model::rule_set_toml;
use dt_tests::proptest_gen::rules::{self, RuleConfig};
use dt_tests::proptest_gen::{G, logs, wire};
use dt_tests::{Receiver, TempRules, WAIT, kernel_or_skip};

const DEFAULT_CASES: u64 = 1500;
const CASES_PER_RULE_SET: usize = 50;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One random change to a request body.
fn mutate(g: &mut G, body: &mut Vec<u8>) -> &'static str {
    if body.is_empty() {
        body.push(g.u32() as u8);
        return "stuffed";
    }
    match g.range(0, 5) {
        0 => {
            for _ in 0..g.range(1, 3) {
                let i = g.range(0, body.len() - 1);
                body[i] ^= 1 << g.range(0, 7);
            }
            "bits flipped"
        }
        1 => {
            let i = g.range(0, body.len() - 1);
            body[i] = *g.pick(&[0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x1a, 0x22]);
            "a byte set"
        }
        2 => {
            let n = g.range(0, body.len() - 1);
            body.truncate(n);
            "cut short"
        }
        3 => {
            let a = g.range(0, body.len() - 1);
            let b = g.range(a, body.len().min(a + 64));
            let piece = body[a..b].to_vec();
            let at = g.range(0, body.len());
            body.splice(at..at, piece);
            "spliced"
        }
        4 => {
            let at = g.range(0, body.len());
            let n = g.range(1, 8);
            let junk = g.bytes(n);
            body.splice(at..at, junk);
            "stuffed"
        }
        _ => {
            let i = g.range(0, body.len() - 1);
            body.remove(i);
            "a byte removed"
        }
    }
}

#[test]
fn the_kernel_does_what_the_host_walker_does() {
    if !kernel_or_skip("the_kernel_does_what_the_host_walker_does") {
        return;
    }
    let seed = env_u64("DT_KDIFF_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let cases = env_u64("DT_KDIFF_CASES").unwrap_or(DEFAULT_CASES) as usize;
    eprintln!(
        "kernel differential: seed {seed}, {cases} requests (replay with DT_KDIFF_SEED={seed})"
    );
    let receiver = Receiver::start_v4();
    let dir = TempRules::new();
    let mut g = G::new(seed);
    let mut agent = None;
    let started = Instant::now();
    let (mut done, mut mutated, mut walked, mut sets) = (0usize, 0usize, 0usize, 0usize);
    while done < cases {
        // A rule set (sample rules left out: their decisions depend on every earlier match,
        // and each host walk starts from zero).
        let rules = rules::rule_set(
            &mut g,
            RuleConfig {
                sample: false,
                redact: true,
            },
        );
        let enrich = g.chance(0.25).then(|| rules::enrich(&mut g));
        let toml = rule_set_toml(enrich.as_ref(), &rules);
        dir.write("50-kdiff.toml", &toml);
        match &mut agent {
            None => agent = Some(start_agent(&dir, &[receiver.port()])),
            Some(a) => {
                a.reload(dir.path())
                    .unwrap_or_else(|e| panic!("reload: {e:#}\n{toml}"));
            }
        }
        sets += 1;
        let compiled = host_walk::compile_rules(&toml);
        let before = receiver.requests().len();
        let mut want = Vec::new();
        let mut client = RawClient::connect(receiver.addr());
        for _ in 0..CASES_PER_RULE_SET.min(cases - done) {
            let mut body = wire::encode(&logs::request(&mut g));
            body.truncate(logs::MAX_BODY);
            let how = if g.chance(0.6) {
                mutated += 1;
                mutate(&mut g, &mut body)
            } else {
                "as generated"
            };
            if let Err(e) = host_walk::both_ways(&compiled, &body) {
                panic!(
                    "seed {seed}, case {done} ({how}): {e}\nrules:\n{toml}\nbody {}",
                    wire::hex(&body)
                );
            }
            let (out, _, _) = host_walk::walk_body(&compiled, &body, true);
            let expect = if out.verdict == "Ok(())" {
                walked += 1;
                out.edited
            } else {
                body.clone()
            };
            let req = post_logs(body.clone());
            // Half in one write, half cut at random points (corked in the kernel meanwhile).
            let split = if g.chance(0.5) {
                Split::Whole
            } else {
                let n = req.len();
                Split::At {
                    offsets: (0..g.range(1, 3)).map(|_| g.range(1, n - 1)).collect(),
                    delay: Duration::from_millis(1),
                }
            };
            let r = client.roundtrip(&req, &split);
            assert!(
                r.status == 200 || r.status == 400,
                "seed {seed}, case {done}: status {}",
                r.status
            );
            want.push((done, how, body, expect, out.verdict));
            done += 1;
        }
        client.finish();
        let got = receiver.wait_for(before + want.len(), WAIT);
        for ((case, how, sent, expect, verdict), r) in want.iter().zip(&got[before..]) {
            if r.body != *expect {
                let first = r
                    .body
                    .iter()
                    .zip(expect.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(r.body.len().min(expect.len()));
                panic!(
                    "seed {seed} (replay with DT_KDIFF_SEED={seed}), case {case} ({how}): the kernel \
                     sent {} bytes, the host walker ({verdict}) says {} bytes; first difference at \
                     {first}\nrules:\n{toml}\nsent     {}\nexpected {}\ngot      {}",
                    r.body.len(),
                    expect.len(),
                    wire::hex(sent),
                    wire::hex(expect),
                    wire::hex(&r.body)
                );
            }
        }
    }
    let took = started.elapsed();
    let stats = dt_tests::agent::stats_of(agent.as_ref().unwrap());
    eprintln!(
        "kernel differential: {done} requests ({mutated} mutated, {walked} walked and edited or \
         kept, {} passed through) under {sets} rule sets, every one as the host walker says, in \
         {:.1} s ({:.0} requests/s); kernel totals: {} records, {} dropped, passthrough {:?}",
        done - walked,
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64().max(0.001),
        stats.totals.records,
        stats.totals.records_dropped,
        stats
            .totals
            .passthrough
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect::<Vec<_>>()
    );
    assert!(walked > 0 && walked < done, "both kinds of requests");
}
