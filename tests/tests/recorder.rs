//! Flight recorders, triggers and states through the kernel: records dropped by a rule that
//! names a recorder are kept there; a trigger flushes them to the capture endpoint (on the same
//! hooked port as the apps) and turns a state on that stops the drop; the state expires; a
//! flush by hand egresses what was recorded since.

use std::time::{Duration, Instant};

use dt_tests::otlp::{LogsRequestBuilder, Rec, encode};
use dt_tests::{
    ExportMode, ExportPlan, PlannedRecord, Receiver, TempRules, WAIT, agent_config,
    export_with_real_exporter, kernel_or_skip, start_agent_with, stats_of,
};
use dt_tests::{ReceivedRecord, client::RawClient, client::Split, http::post_logs};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

const RECORDER_SCOPE: &str = "dt.recorder.checkout-debug";

fn rules(duration: &str) -> String {
    format!(
        r#"
[[recorder]]
name = "checkout-debug"
size = "1MiB"

[[state]]
name = "incident"
duration = "{duration}"

[[rule]]
name = "drop-checkout-debug"
action = "drop"
recorder = "checkout-debug"
[rule.match]
severity = "DEBUG"
service = "checkout"
state = "!incident"

[[rule]]
name = "checkout-error"
action = "trigger"
flush = ["checkout-debug"]
set_state = ["incident"]
cooldown = "1m"
[rule.match]
severity = ">=ERROR"
service = "checkout"
"#
    )
}

fn rec(severity_number: i32, body: String) -> PlannedRecord {
    PlannedRecord {
        scope: "app".into(),
        severity_number,
        body,
        attributes: vec![("request.id".into(), body_id(severity_number))],
        event_name: None,
    }
}

fn body_id(n: i32) -> String {
    format!("r-{n}")
}

fn plan(records: Vec<PlannedRecord>) -> ExportPlan {
    let n = records.len();
    ExportPlan {
        services: vec![("checkout".into(), records)],
        batch_size: n,
        mode: ExportMode::Direct,
    }
}

/// The LogRecords of the recorder's flushes the receiver got, in order: decoded, and as the raw
/// bytes of each `log_records` field of the request body.
fn flushed(receiver: &Receiver) -> (Vec<ReceivedRecord>, Vec<Vec<u8>>) {
    let mut records = Vec::new();
    let mut raw = Vec::new();
    for r in receiver.requests() {
        let Some(logs) = &r.logs else { continue };
        let is_flush = logs.resource_logs.iter().any(|rl| {
            rl.scope_logs
                .iter()
                .any(|sl| sl.scope.as_ref().is_some_and(|s| s.name == RECORDER_SCOPE))
        });
        if !is_flush {
            continue;
        }
        records.extend(r.records());
        raw.extend(raw_log_records(&r.body));
    }
    (records, raw)
}

/// The bytes of every LogRecord of an `ExportLogsServiceRequest` body, as they are on the wire.
fn raw_log_records(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rl in fields(body, 1) {
        for sl in fields(rl, 2) {
            out.extend(fields(sl, 2).into_iter().map(<[u8]>::to_vec));
        }
    }
    out
}

/// The length-delimited fields number `want` of a message (the others skipped by wire type).
fn fields(mut m: &[u8], want: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !m.is_empty() {
        let key = prost::encoding::decode_varint(&mut m).expect("key");
        match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut m).expect("varint");
            }
            1 => m = &m[8..],
            5 => m = &m[4..],
            2 => {
                let len = prost::encoding::decode_varint(&mut m).expect("len") as usize;
                if key >> 3 == want {
                    out.push(&m[..len]);
                }
                m = &m[len..];
            }
            t => panic!("wire type {t}"),
        }
    }
    out
}

/// Waits until `f` holds, or panics with `what`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bodies(records: &[ReceivedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.body.clone().unwrap_or_default())
        .collect()
}

#[test]
fn debug_is_recorded_an_error_flushes_it_and_raises_verbosity_until_the_state_expires() {
    if !kernel_or_skip("recorder: debug recorded, error flushes") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("recorder.toml", &rules("3s"))]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    // The capture endpoint is the apps' collector, on the hooked port.
    cfg.capture_endpoint = Some(receiver.logs_url());
    let agent = start_agent_with(cfg);

    // 1. Calm: 30 DEBUG records in 3 requests, with INFO records among them.
    let mut sent_debug = Vec::new();
    for batch in 0..3 {
        let mut records = Vec::new();
        for i in 0..10 {
            let body = format!("debug {batch}-{i}");
            sent_debug.push(body.clone());
            records.push(rec(5, body));
            if i % 5 == 0 {
                records.push(rec(9, format!("info {batch}-{i}")));
            }
        }
        export_with_real_exporter(receiver.port(), &plan(records)).assert_all_ok(12);
    }
    let got = receiver.wait_for(3, WAIT);
    assert!(
        got.iter()
            .flat_map(|r| r.records())
            .all(|r| r.severity_number == 9),
        "DEBUG records reached the collector while the state was off"
    );
    let s = stats_of(&agent);
    let rec_stats = &s.recorders[0];
    assert_eq!(
        (rec_stats.name.as_str(), rec_stats.records),
        ("checkout-debug", 30)
    );
    assert_eq!(s.rule("drop-checkout-debug").unwrap().dropped, 30);
    assert!(!s.states[0].on);

    // 2. One request: DEBUG, ERROR, DEBUG, DEBUG. The first DEBUG is judged with the state off
    // (dropped and recorded); the ERROR fires; the DEBUG records after it in the same request
    // are judged with the state on, and kept.
    let fired_at = Instant::now();
    let records = vec![
        rec(5, "debug before the error".into()),
        rec(17, "checkout failed".into()),
        rec(5, "debug after the error 1".into()),
        rec(5, "debug after the error 2".into()),
    ];
    sent_debug.push("debug before the error".into());
    export_with_real_exporter(receiver.port(), &plan(records)).assert_all_ok(4);
    // The flush: exactly the recorded records, oldest first, byte for byte.
    wait_until("the flush", Duration::from_secs(1), || {
        flushed(&receiver).0.len() == 31
    });
    let egress = fired_at.elapsed();
    let (records, raw) = flushed(&receiver);
    assert_eq!(bodies(&records), sent_debug);
    assert!(
        records
            .iter()
            .all(|r| r.service == "checkout" && r.severity_number == 5)
    );
    for (r, bytes) in records.iter().zip(&raw) {
        // The Rust SDK encodes with prost, canonically: the record it sent is the canonical
        // encoding of what it decodes to.
        let decoded = LogRecord::decode(&bytes[..]).expect("decode");
        assert_eq!(&decoded.encode_to_vec(), bytes, "{:?}", r.body);
    }
    let s = stats_of(&agent);
    assert_eq!(s.rule("checkout-error").unwrap().fired, Some(1));
    assert!(s.states[0].on, "{:?}", s.states);
    let app: Vec<ReceivedRecord> = receiver
        .records()
        .into_iter()
        .filter(|r| r.scope != RECORDER_SCOPE)
        .collect();
    let after: Vec<String> = bodies(&app)
        .into_iter()
        .filter(|b| b.contains("error") || b == "checkout failed")
        .collect();
    assert_eq!(
        after,
        [
            "checkout failed",
            "debug after the error 1",
            "debug after the error 2"
        ]
    );
    eprintln!("flush egress began and ended within {egress:?} of the firing");

    // 3. While the state is on, DEBUG records reach the collector.
    let records = (0..5)
        .map(|i| rec(5, format!("incident debug {i}")))
        .collect();
    export_with_real_exporter(receiver.port(), &plan(records)).assert_all_ok(5);
    wait_until("the incident DEBUG records", WAIT, || {
        receiver
            .records()
            .iter()
            .filter(|r| {
                r.scope != RECORDER_SCOPE
                    && r.body.as_deref().is_some_and(|b| b.starts_with("incident"))
            })
            .count()
            == 5
    });

    // 4. After it expires, DEBUG records are dropped and recorded again; a flush by hand egresses
    // them. The flush goes to the hooked port while the drop rule holds again: the agent's own
    // connection is not hooked, or the rule would drop (and record) them again.
    wait_until("the state to expire", Duration::from_secs(10), || {
        !stats_of(&agent).states[0].on
    });
    let records = (0..5).map(|i| rec(5, format!("calm again {i}"))).collect();
    let before = receiver.requests().len();
    export_with_real_exporter(receiver.port(), &plan(records)).assert_all_ok(5);
    receiver.wait_for(before + 1, WAIT);
    let s = stats_of(&agent);
    assert_eq!(s.recorders[0].records, 5, "{:?}", s.recorders);
    assert_eq!(s.rule("drop-checkout-debug").unwrap().dropped, 36);
    let (requester, slots) = agent
        .flush_request(&["checkout-debug".to_string()])
        .expect("flush request");
    let out = requester.flush(slots).expect("flush");
    assert_eq!(out[0].records, 5);
    let (records, _) = flushed(&receiver);
    assert_eq!(
        bodies(&records[31..]),
        (0..5)
            .map(|i| format!("calm again {i}"))
            .collect::<Vec<_>>()
    );
    let s = stats_of(&agent);
    let r = &s.recorders[0];
    assert_eq!(
        (
            r.records,
            r.flushes,
            r.flushed_records,
            r.overwritten,
            r.too_long
        ),
        (0, 2, 36, 0, 0),
        "{r:?}"
    );
    assert_eq!(s.rule("drop-checkout-debug").unwrap().dropped, 36);
    assert_eq!(s.rule("checkout-error").unwrap().matched, 1);
}

/// Sends one raw OTLP request (exact bytes) on a fresh connection and checks the answer.
fn send_raw(port: u16, req: &ExportLogsServiceRequest) {
    let mut c = RawClient::connect(([127, 0, 0, 1], port).into());
    let resp = c.roundtrip(&post_logs(encode(req)), &Split::Whole);
    assert_eq!(resp.status, 200);
}

#[test]
fn a_small_recorder_keeps_exactly_the_newest_records_that_fit() {
    if !kernel_or_skip("recorder: overwrite") {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[recorder]]
name = "small"
size = "64KiB"
max_record = 1024

[[rule]]
name = "drop-debug"
action = "drop"
recorder = "small"
[rule.match]
severity = "DEBUG"
"#;
    let dir = TempRules::with_files(&[("r.toml", text)]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(receiver.logs_url());
    let agent = start_agent_with(cfg);
    // 1,000 records of varied sizes (about 150 KiB of ring entries), in 20 requests.
    let mut sent: Vec<LogRecord> = Vec::new();
    for k in 0..20 {
        let req = LogsRequestBuilder::new()
            .resource("svc")
            .scope("app")
            .records((0..50).map(|i| {
                let n = k * 50 + i;
                Rec::new(5, &format!("debug {n:06} {}", "y".repeat(n * 7 % 120)))
            }))
            .build();
        sent.extend(
            req.resource_logs[0].scope_logs[0]
                .log_records
                .iter()
                .cloned(),
        );
        send_raw(receiver.port(), &req);
    }
    // What must be left: counted back from the newest, the records whose entries fit.
    let entry = |r: &LogRecord| dt_ebpf_common::entry_len(3, r.encoded_len() as u32) as u64;
    let mut budget = 64 * 1024u64;
    let mut keep = 0;
    for r in sent.iter().rev() {
        if entry(r) > budget {
            break;
        }
        budget -= entry(r);
        keep += 1;
    }
    assert!(keep > 100 && keep < sent.len());
    let s = stats_of(&agent);
    assert_eq!(s.recorders[0].records, keep as u64, "{:?}", s.recorders);
    assert_eq!(s.recorders[0].overwritten, (sent.len() - keep) as u64);
    let (requester, slots) = agent.flush_request(&["small".into()]).unwrap();
    assert_eq!(requester.flush(slots).unwrap()[0].records, keep as u64);
    let mut got = Vec::new();
    for r in receiver.requests() {
        got.extend(raw_log_records(&r.body));
    }
    let want: Vec<Vec<u8>> = sent[sent.len() - keep..]
        .iter()
        .map(|r| r.encode_to_vec())
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the flushed records are not the newest ones, byte for byte"
    );
}

#[test]
fn a_threshold_trigger_fires_on_exactly_the_count_th_match() {
    if !kernel_or_skip("trigger: threshold") {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[state]]
name = "verbose"
duration = "1h"

[[rule]]
name = "errors"
action = "trigger"
set_state = ["verbose"]
threshold = { count = 5, within = "1m" }
[rule.match]
severity = ">=ERROR"

[[rule]]
name = "drop-debug-when-calm"
action = "drop"
[rule.match]
severity = "DEBUG"
state = "!verbose"
"#;
    let dir = TempRules::with_files(&[("t.toml", text)]);
    let agent = start_agent_with(agent_config(&dir, &[receiver.port()]));
    for n in 1..=4 {
        send_raw(
            receiver.port(),
            &LogsRequestBuilder::new()
                .resource("svc")
                .scope("app")
                .record(Rec::new(17, &format!("error {n}")))
                .record(Rec::new(5, "debug"))
                .build(),
        );
        let s = stats_of(&agent);
        assert_eq!(s.rule("errors").unwrap().fired, Some(0), "after {n} errors");
        assert!(!s.states[0].on);
    }
    // The 5th error fires: the DEBUG record after it in the same request is kept.
    send_raw(
        receiver.port(),
        &LogsRequestBuilder::new()
            .resource("svc")
            .scope("app")
            .record(Rec::new(5, "debug before"))
            .record(Rec::new(17, "error 5"))
            .record(Rec::new(5, "debug after"))
            .build(),
    );
    let s = stats_of(&agent);
    assert_eq!(s.rule("errors").unwrap().fired, Some(1));
    assert_eq!(s.rule("errors").unwrap().matched, 5);
    assert!(s.states[0].on);
    assert_eq!(s.rule("drop-debug-when-calm").unwrap().dropped, 5);
    let last = receiver.wait_for(5, WAIT).pop().unwrap();
    assert_eq!(bodies(&last.records()), ["error 5", "debug after"]);
    // A 6th within the window does not fire again.
    send_raw(
        receiver.port(),
        &LogsRequestBuilder::new()
            .resource("svc")
            .scope("app")
            .record(Rec::new(17, "error 6"))
            .build(),
    );
    assert_eq!(stats_of(&agent).rule("errors").unwrap().fired, Some(1));
}

#[test]
fn two_senders_on_two_cpus_fire_a_trigger_with_a_cooldown_once() {
    if !kernel_or_skip("trigger: concurrency") {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[state]]
name = "incident"
duration = "1h"

[[rule]]
name = "error"
action = "trigger"
set_state = ["incident"]
cooldown = "1h"
[rule.match]
severity = ">=ERROR"
"#;
    let dir = TempRules::with_files(&[("c.toml", text)]);
    let agent = start_agent_with(agent_config(&dir, &[receiver.port()]));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let port = receiver.port();
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let senders: Vec<_> = (0..2)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                // One sender per CPU.
                // SAFETY: a cpu_set_t on the stack, for this thread only.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(t % cpus, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                let req = LogsRequestBuilder::new()
                    .resource("svc")
                    .scope("app")
                    .records((0..200).map(|i| Rec::new(17, &format!("error {t}-{i}"))))
                    .build();
                let bytes = post_logs(encode(&req));
                let mut c = RawClient::connect(([127, 0, 0, 1], port).into());
                start.wait();
                for _ in 0..25 {
                    assert_eq!(c.roundtrip(&bytes, &Split::Whole).status, 200);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let s = stats_of(&agent);
    let r = s.rule("error").unwrap();
    assert_eq!(r.matched, 2 * 25 * 200);
    assert_eq!(r.fired, Some(1), "{cpus} CPUs");
    assert!(s.states[0].on);
}

/// A pinned agent killed with SIGKILL: the kernel goes on filtering and recording, and an
/// ERROR still fires the trigger (its state turns on, in the kernel); the flush it asked for is
/// done by the next agent, which adopts the pins and finds the records still there.
#[test]
fn after_kill_9_the_kernel_fires_and_the_restarted_agent_flushes() {
    if !kernel_or_skip("recorder: kill -9") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("recorder.toml", &rules("1h"))]);
    let mut agent = dt_tests::agent_process::AgentProcess::new(
        "recorder-kill9",
        dir.path(),
        &[receiver.port()],
        true,
    );
    agent.write_config(&format!("capture_endpoint = \"{}\"\n", receiver.logs_url()));
    agent.start();
    let calm = LogsRequestBuilder::new()
        .resource("checkout")
        .scope("app")
        .records((0..10).map(|i| Rec::new(5, &format!("debug {i}"))))
        .build();
    send_raw(receiver.port(), &calm);
    assert_eq!(agent.stats().recorders[0].records, 10);
    agent.kill9();

    // No agent: the kernel fires the trigger itself.
    send_raw(
        receiver.port(),
        &LogsRequestBuilder::new()
            .resource("checkout")
            .scope("app")
            .record(Rec::new(17, "checkout failed"))
            .record(Rec::new(5, "debug after"))
            .build(),
    );
    // (The calm request arrived with every record dropped.)
    let got = receiver.wait_for(2, WAIT);
    assert_eq!(
        bodies(&got[1].records()),
        ["checkout failed", "debug after"]
    );
    let pinned = agent.stats();
    assert!(pinned.states[0].on, "{:?}", pinned.states);
    assert_eq!(pinned.rule("checkout-error").unwrap().fired, Some(1));
    assert_eq!(pinned.recorders[0].records, 10);
    assert!(flushed(&receiver).0.is_empty());
    // With no agent, a state is set on the pins directly (off, then on again as it was).
    for (args, on) in [
        (&["incident", "off"][..], false),
        (&["incident", "on"][..], true),
    ] {
        let o = agent.verb("state", args);
        let text = dt_tests::agent_process::output_text(&o);
        assert!(o.status.success(), "{text}");
        assert!(
            text.contains("no agent is running: set on the pinned state under"),
            "{text}"
        );
        let st = &agent.stats().states[0];
        assert_eq!(st.on, on, "{st:?}");
    }
    let o = agent.verb("state", &["nope", "off"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no state named nope"));

    // The next agent adopts the pins and serves the flush request.
    agent.start();
    wait_until(
        "the flush by the restarted agent",
        Duration::from_secs(10),
        || flushed(&receiver).0.len() == 10,
    );
    let (records, raw) = flushed(&receiver);
    assert_eq!(
        bodies(&records),
        (0..10).map(|i| format!("debug {i}")).collect::<Vec<_>>()
    );
    let want: Vec<Vec<u8>> = calm.resource_logs[0].scope_logs[0]
        .log_records
        .iter()
        .map(|r| r.encode_to_vec())
        .collect();
    assert_eq!(raw, want);
    let s = agent.stats();
    assert_eq!((s.recorders[0].records, s.recorders[0].flushes), (0, 1));

    // The verbs by hand.
    let o = agent.verb("state", &["incident", "off"]);
    assert!(
        o.status.success(),
        "{}",
        dt_tests::agent_process::output_text(&o)
    );
    assert!(!agent.stats().states[0].on);
    let o = agent.verb("state", &["incident", "on", "--for", "90s"]);
    assert!(
        o.status.success(),
        "{}",
        dt_tests::agent_process::output_text(&o)
    );
    let st = &agent.stats().states[0];
    assert!(
        st.on && st.remaining_ms > 80_000 && st.remaining_ms <= 90_000,
        "{st:?}"
    );
    let o = agent.verb("state", &["nope", "on"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no state named nope"));
    let o = agent.verb("flush", &["checkout-debug"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "recorder checkout-debug: 0 records flushed\n"
    );
    let o = agent.verb("flush", &["nope"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no recorder named nope"));
}

/// A firing stands when its request then passes through untouched: the state stays on and
/// `fired` counts it, while the request's other counters are not committed.
#[test]
fn a_firing_stands_when_its_request_passes_through() {
    if !kernel_or_skip("trigger: firing stands") {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[state]]
name = "incident"
duration = "1h"

[[rule]]
name = "error"
action = "trigger"
set_state = ["incident"]
[rule.match]
severity = ">=ERROR"
"#;
    let dir = TempRules::with_files(&[("p.toml", text)]);
    let agent = start_agent_with(agent_config(&dir, &[receiver.port()]));
    let req = LogsRequestBuilder::new()
        .resource("svc")
        .scope("app")
        .record(Rec::new(17, "error"))
        .build();
    // After the ResourceLogs, a field whose length runs past the end: the walk fails there.
    let mut body = encode(&req);
    body.extend_from_slice(&[0x0a, 0x7f]);
    let mut c = RawClient::connect(receiver.addr());
    // (The receiver answers 400 to it: it cannot decode it either.)
    c.roundtrip(&post_logs(body.clone()), &Split::Whole);
    let got = receiver.wait_for(1, WAIT);
    assert_eq!(got[0].body, body, "the request passed byte for byte");
    let s = stats_of(&agent);
    assert_eq!(s.totals.passthrough["malformed"], 1);
    let r = s.rule("error").unwrap();
    assert_eq!((r.matched, r.fired), (0, Some(1)));
    assert!(s.states[0].on);
}

/// States by hand, and a flush whose endpoint is down: tried a few times, then given up and
/// counted, its records left in the recorder.
#[test]
fn states_by_hand_and_a_flush_to_an_endpoint_that_is_down() {
    if !kernel_or_skip("recorder: states by hand, endpoint down") {
        return;
    }
    let receiver = Receiver::start_v4();
    let (closed, closed_port) = dt_tests::reserve_port();
    drop(closed);
    let dir = TempRules::with_files(&[("recorder.toml", &rules("1h"))]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(format!("http://127.0.0.1:{closed_port}/v1/logs"));
    let mut agent = start_agent_with(cfg);
    let debug = |n: usize| {
        LogsRequestBuilder::new()
            .resource("checkout")
            .scope("app")
            .records((0..n).map(|i| Rec::new(5, &format!("debug {i}"))))
            .build()
    };
    // On by hand: DEBUG passes; off again: dropped and recorded.
    agent
        .set_state("incident", true, Some(Duration::from_secs(60)))
        .unwrap();
    let s = stats_of(&agent);
    assert!(
        s.states[0].on && s.states[0].remaining_ms > 50_000,
        "{:?}",
        s.states
    );
    send_raw(receiver.port(), &debug(3));
    assert_eq!(
        stats_of(&agent)
            .rule("drop-checkout-debug")
            .unwrap()
            .matched,
        0
    );
    agent.set_state("incident", false, None).unwrap();
    send_raw(receiver.port(), &debug(4));
    let s = stats_of(&agent);
    assert_eq!((s.recorders[0].records, s.states[0].on), (4, false));
    let e = agent.set_state("nope", true, None).unwrap_err().to_string();
    assert!(e.contains("no state named nope"), "{e}");
    // The endpoint is down: 5 tries over about 3 s, then given up; the records stay.
    let (requester, slots) = agent.flush_request(&["checkout-debug".into()]).unwrap();
    let start = Instant::now();
    let e = requester.flush(slots).unwrap_err();
    assert!(
        format!("{e:#}").contains("flush given up after 5 tries"),
        "{e:#}"
    );
    assert!(start.elapsed() >= Duration::from_secs(3));
    let s = stats_of(&agent);
    let r = &s.recorders[0];
    assert_eq!(
        (r.records, r.flushes, r.flush_failures, r.flushed_records),
        (4, 0, 1, 0)
    );
}

/// A capture endpoint that takes the connection and never answers: each try gives up after
/// 5 s, the flush after its 5 tries, counted, within `dt-agent flush`'s wait; the records stay.
#[test]
fn a_flush_to_an_endpoint_that_never_answers_is_given_up_in_time() {
    if !kernel_or_skip("recorder: endpoint never answers") {
        return;
    }
    let receiver = Receiver::start_v4();
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_port = hung.local_addr().unwrap().port();
    // Takes every connection and holds it, reading nothing, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming().flatten() {
            held.push(s);
        }
    });
    // A second recorder, named in the same flush: the flush has one budget for both.
    let other = "[[recorder]]\nname = \"other\"\nsize = \"64KiB\"\n\n[[rule]]\n\
                 name = \"drop-other\"\naction = \"drop\"\nrecorder = \"other\"\n\
                 [rule.match]\nservice = \"other\"\n";
    let dir = TempRules::with_files(&[("recorder.toml", &rules("1h")), ("other.toml", other)]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(format!("http://127.0.0.1:{hung_port}/v1/logs"));
    let agent = start_agent_with(cfg);
    let debug = LogsRequestBuilder::new()
        .resource("checkout")
        .scope("app")
        .records((0..4).map(|i| Rec::new(5, &format!("debug {i}"))))
        .build();
    send_raw(receiver.port(), &debug);
    let to_other = LogsRequestBuilder::new()
        .resource("other")
        .scope("app")
        .records((0..2).map(|i| Rec::new(9, &format!("other {i}"))))
        .build();
    send_raw(receiver.port(), &to_other);
    let s = stats_of(&agent);
    let held: Vec<_> = s
        .recorders
        .iter()
        .map(|r| (r.name.as_str(), r.records))
        .collect();
    assert_eq!(held, [("checkout-debug", 4), ("other", 2)]);
    let (requester, slots) = agent
        .flush_request(&["checkout-debug".into(), "other".into()])
        .unwrap();
    let start = Instant::now();
    let e = format!("{:#}", requester.flush(slots).unwrap_err());
    let took = start.elapsed();
    // Each recorder's fate, in one answer within `dt-agent flush`'s wait.
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].starts_with("recorder checkout-debug: flush given up after 5 tries"),
        "{e}"
    );
    assert!(lines[0].contains("no answer within 5 s"), "{e}");
    // What time is left after the first (about 1 s) goes to the second.
    assert!(
        lines[1].starts_with("recorder other: flush given up after"),
        "{e}"
    );
    assert!(
        took >= Duration::from_secs(25) && took < dt_agent::export::flush::FLUSH_WAIT,
        "{took:?}: {e}"
    );
    let s = stats_of(&agent);
    let r = s
        .recorders
        .iter()
        .find(|r| r.name == "checkout-debug")
        .unwrap();
    assert_eq!(
        (r.records, r.flushes, r.flush_failures, r.flushed_records),
        (4, 0, 1, 0)
    );
}

/// A push that keeps a recorder keeps its records; one that removes it frees its ring.
#[test]
fn rule_sets_keep_or_free_recorders_by_name() {
    if !kernel_or_skip("recorder: generations") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("recorder.toml", &rules("1h"))]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(receiver.logs_url());
    let mut agent = start_agent_with(cfg);
    // The recorder's 1 MiB ring is an array map of 256 blocks. By id: other tests' agents
    // (in this binary and in the one running beside it) make and free rings of their own.
    let rings = || {
        let maps = dt_tests::agent_process::bpftool_json(&["map", "show"]);
        maps.as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("standalone_arr"))
                    && m["max_entries"].as_u64() == Some(256)
            })
            .filter_map(|m| m["id"].as_u64())
            .collect::<std::collections::BTreeSet<u64>>()
    };
    let before = rings();
    send_raw(
        receiver.port(),
        &LogsRequestBuilder::new()
            .resource("checkout")
            .scope("app")
            .records((0..6).map(|i| Rec::new(5, &format!("debug {i}"))))
            .build(),
    );
    assert_eq!(stats_of(&agent).recorders[0].records, 6);
    // The same recorder, another rule: records kept.
    dir.write(
        "extra.toml",
        "[[rule]]\nname = \"count-all\"\naction = \"count\"\n",
    );
    agent.reload(dir.path()).unwrap();
    assert_eq!(stats_of(&agent).recorders[0].records, 6);
    // No recorder: its ring goes.
    dir.write(
        "recorder.toml",
        "[[rule]]\nname = \"drop-checkout-debug\"\naction = \"drop\"\n[rule.match]\nseverity = \"DEBUG\"\n",
    );
    agent.reload(dir.path()).unwrap();
    assert!(stats_of(&agent).recorders.is_empty());
    wait_until("the ring to be freed", Duration::from_secs(5), || {
        !before.is_subset(&rings())
    });
    // Back again: a new, empty ring; its counters go on from where they were (what the ring
    // held counts as overwritten), so that no exported counter of its name goes backwards.
    dir.write("recorder.toml", &rules("1h"));
    agent.reload(dir.path()).unwrap();
    let back = stats_of(&agent).recorders[0].clone();
    assert_eq!(
        (back.records, back.recorded, back.overwritten, back.flushes),
        (0, 6, 6, 0),
        "{back:?}"
    );
    send_raw(
        receiver.port(),
        &LogsRequestBuilder::new()
            .resource("checkout")
            .scope("app")
            .records((0..2).map(|i| Rec::new(5, &format!("debug {i}"))))
            .build(),
    );
    let on = stats_of(&agent).recorders[0].clone();
    assert_eq!(
        (on.records, on.recorded, on.overwritten),
        (2, 8, 6),
        "{on:?}"
    );
}

/// The Node.js SDK sends every export chunked: what its requests lose to a recorder's rule is
/// egressed byte for byte as its own serializer (protobufjs, not prost) wrote it.
#[test]
fn node_sdk_chunked_exports_are_recorded_byte_for_byte() {
    let test = "node_sdk_chunked_exports_are_recorded_byte_for_byte";
    if !kernel_or_skip(test) || dt_tests::node_or_skip(test).is_none() {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[recorder]]
name = "debug"
size = "1MiB"

[[rule]]
name = "drop-debug"
action = "drop"
recorder = "debug"
[rule.match]
severity = "<INFO"
"#;
    let dir = TempRules::with_files(&[("n.toml", text)]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(receiver.logs_url());
    let agent = start_agent_with(cfg);
    let plan = ExportPlan::mixed(600, &["checkout", "payments"], 100);
    let report = dt_tests::export_with_node(&receiver.logs_url(), &plan);
    report.assert_all_ok(plan.total());
    receiver.wait_for(report.batches_ok, WAIT);
    let s = stats_of(&agent);
    assert_eq!(s.totals.passthrough["chunked"], 0);
    // What the exporter serialized, below INFO, in export order: what the recorder must hold.
    let want: Vec<Vec<u8>> = report
        .bodies
        .iter()
        .flat_map(|b| raw_log_records(b))
        .filter(|r| {
            let sev = LogRecord::decode(&r[..]).unwrap().severity_number;
            (1..=8).contains(&sev)
        })
        .collect();
    assert!(want.len() > 100);
    assert_eq!(s.recorders[0].records, want.len() as u64);
    let before = receiver.requests().len();
    let (requester, slots) = agent.flush_request(&["debug".into()]).unwrap();
    assert_eq!(
        requester.flush(slots).unwrap()[0].records,
        want.len() as u64
    );
    let got: Vec<Vec<u8>> = receiver.requests()[before..]
        .iter()
        .flat_map(|r| raw_log_records(&r.body))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "flushed records differ from the exporter's bytes"
    );
}

/// The Python SDK (its OTLP/HTTP exporter, protobuf encoded with upb, Content-Length): what a
/// drop rule records is what the exporter sent, record for record, in order and at the same
/// encoded size; a flush egresses exactly those.
#[test]
fn python_sdk_exports_are_recorded_as_they_were_sent() {
    let test = "python_sdk_exports_are_recorded_as_they_were_sent";
    if !kernel_or_skip(test) || dt_tests::python_or_skip(test).is_none() {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[recorder]]
name = "debug"
size = "1MiB"

[[rule]]
name = "drop-debug"
action = "drop"
recorder = "debug"
[rule.match]
severity = "<INFO"
"#;
    let dir = TempRules::with_files(&[("p.toml", text)]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(receiver.logs_url());
    let agent = start_agent_with(cfg);
    let plan = ExportPlan::mixed(600, &["checkout", "payments"], 100);
    let report = dt_tests::export_with_python(&receiver.logs_url(), &plan);
    report.assert_all_ok(plan.total());
    receiver.wait_for(report.batches_ok, WAIT);
    // What the exporter sent below INFO, in export order: what the recorder must hold.
    let want: Vec<_> = report
        .sent
        .iter()
        .filter(|s| (1..=8).contains(&s.record.severity_number))
        .collect();
    assert!(want.len() > 100);
    let s = stats_of(&agent);
    assert_eq!(s.recorders[0].records, want.len() as u64);
    assert_eq!(s.rules[0].dropped, want.len() as u64);
    let before = receiver.requests().len();
    let (requester, slots) = agent.flush_request(&["debug".into()]).unwrap();
    assert_eq!(
        requester.flush(slots).unwrap()[0].records,
        want.len() as u64
    );
    let flushes = &receiver.requests()[before..];
    let got: Vec<ReceivedRecord> = flushes.iter().flat_map(|r| r.records()).collect();
    let sizes: Vec<u64> = flushes
        .iter()
        .flat_map(|r| raw_log_records(&r.body))
        .map(|r| 1 + dt_tests::record::varint_len(r.len() as u64) + r.len() as u64)
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // The flush names the recorder as the scope; everything else is the record as sent.
        assert_eq!(
            (&g.service, g.severity_number, &g.body, &g.attributes),
            (
                &w.record.service,
                w.record.severity_number,
                &w.record.body,
                &w.record.attributes
            ),
            "flushed record {i}"
        );
        assert_eq!(g.scope, "dt.recorder.debug");
        assert_eq!(sizes[i], w.field_len, "flushed record {i}: encoded size");
    }
}

/// A recorder whose size changes starts with an empty ring: the agent says what was discarded
/// (the old and new sizes), and the recorder's counters go on, so no exported counter goes
/// backwards (the records the old ring held count as overwritten).
#[test]
fn a_resized_recorder_starts_empty_and_its_counters_go_on() {
    if !kernel_or_skip("recorder: resize") {
        return;
    }
    let receiver = Receiver::start_v4();
    let dir = TempRules::with_files(&[("recorder.toml", &rules("1h"))]);
    let mut agent = dt_tests::agent_process::AgentProcess::new(
        "recorder-resize",
        dir.path(),
        &[receiver.port()],
        false,
    );
    agent.write_config(&format!("capture_endpoint = \"{}\"\n", receiver.logs_url()));
    agent.start();
    let debug = |from: usize, n: usize| {
        LogsRequestBuilder::new()
            .resource("checkout")
            .scope("app")
            .records((from..from + n).map(|i| Rec::new(5, &format!("debug {i}"))))
            .build()
    };
    send_raw(receiver.port(), &debug(0, 4));
    let o = agent.verb("flush", &["checkout-debug"]);
    assert!(
        o.status.success(),
        "{}",
        dt_tests::agent_process::output_text(&o)
    );
    send_raw(receiver.port(), &debug(4, 6));
    let before = agent.stats().recorders[0].clone();
    assert_eq!(
        (
            before.records,
            before.recorded,
            before.flushes,
            before.flushed_records
        ),
        (6, 10, 1, 4),
        "{before:?}"
    );

    // The directory's watcher reloads it.
    dir.write(
        "recorder.toml",
        &rules("1h").replace("\"1MiB\"", "\"2MiB\""),
    );
    agent.wait_log(
        "recorder checkout-debug: its size changed from 1048576 to 2097152 bytes, so it starts \
         empty: the 6 records it held are discarded",
        1,
        WAIT,
    );
    let after = agent.stats().recorders[0].clone();
    assert_eq!(after.size, 2 * 1024 * 1024);
    assert_eq!(after.records, 0, "{after:?}");
    assert_eq!(
        (
            after.recorded,
            after.overwritten,
            after.flushes,
            after.flushed_records
        ),
        (10, 6, 1, 4),
        "{after:?}"
    );
    // It records on, and a flush egresses only what the new ring holds.
    send_raw(receiver.port(), &debug(10, 3));
    let o = agent.verb("flush", &["checkout-debug"]);
    assert!(
        o.status.success(),
        "{}",
        dt_tests::agent_process::output_text(&o)
    );
    let end = agent.stats().recorders[0].clone();
    assert_eq!(
        (
            end.records,
            end.recorded,
            end.overwritten,
            end.flushes,
            end.flushed_records
        ),
        (0, 13, 6, 2, 7),
        "{end:?}"
    );
    let (records, _) = flushed(&receiver);
    assert_eq!(
        bodies(&records),
        [
            "debug 0", "debug 1", "debug 2", "debug 3", "debug 10", "debug 11", "debug 12"
        ]
    );
}

/// A record a redact rule matched, then dropped by a rule that names a recorder, is not
/// recorded: its copy would leave the host unredacted when flushed. It counts as `lost`;
/// records of the same run that no redact rule matched are recorded as usual.
#[test]
fn records_a_redact_rule_matched_are_not_recorded() {
    if !kernel_or_skip("recorder: redacted records") {
        return;
    }
    let receiver = Receiver::start_v4();
    let text = r#"
[[recorder]]
name = "dbg"
size = "64KiB"

[[rule]]
name = "scrub-accounts"
action = "redact"
mask_body = true
remove_attributes = ["user.email"]
[rule.match]
service = "accounts"

[[rule]]
name = "drop-debug"
action = "drop"
recorder = "dbg"
[rule.match]
severity = "DEBUG"

[[recorder]]
name = "smp"
size = "64KiB"

[[rule]]
name = "sample-info"
action = "sample"
keep_one_in = 2
recorder = "smp"
[rule.match]
severity = "INFO"
"#;
    let dir = TempRules::with_files(&[("r.toml", text)]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(receiver.logs_url());
    let agent = start_agent_with(cfg);
    for service in ["accounts", "shop", "accounts"] {
        send_raw(
            receiver.port(),
            &LogsRequestBuilder::new()
                .resource(service)
                .scope("app")
                .records((0..3).map(|i| {
                    Rec::new(5, &format!("{service} debug {i} for bob@example.com"))
                        .attr("user.email", "bob@example.com")
                }))
                .build(),
        );
    }
    // Sampled out too: of 4 INFO records of each service, 2 are removed (recorded for shop).
    for service in ["accounts", "shop"] {
        send_raw(
            receiver.port(),
            &LogsRequestBuilder::new()
                .resource(service)
                .scope("app")
                .records((0..4).map(|i| Rec::new(9, &format!("{service} info {i}"))))
                .build(),
        );
    }
    let s = stats_of(&agent);
    let rec = |name: &str| s.recorders.iter().find(|r| r.name == name).unwrap();
    let r = rec("dbg");
    assert_eq!((r.records, r.recorded, r.lost), (3, 3, 6), "{r:?}");
    let r = rec("smp");
    assert_eq!((r.records, r.recorded, r.lost), (2, 2, 2), "{r:?}");
    assert_eq!(s.rule("drop-debug").unwrap().dropped, 9);
    let (requester, slots) = agent.flush_request(&["dbg".into()]).unwrap();
    assert_eq!(requester.flush(slots).unwrap()[0].records, 3);
    let flushed_records: Vec<ReceivedRecord> = receiver
        .records()
        .into_iter()
        .filter(|r| r.scope == "dt.recorder.dbg")
        .collect();
    let bodies = bodies(&flushed_records);
    assert_eq!(
        bodies,
        [
            "shop debug 0 for bob@example.com",
            "shop debug 1 for bob@example.com",
            "shop debug 2 for bob@example.com"
        ]
    );
}

/// An endpoint that takes requests and answers each 200 only when told, one answer per
/// message on the returned sender; the receiver says when a request has arrived whole.
fn gated_endpoint() -> (
    u16,
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Receiver<()>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (arrived_tx, arrived) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let _ = arrived_tx.send(());
            if released.recv().is_err() {
                return;
            }
            let mut stream = stream;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (port, release, arrived)
}

/// Records a flush has read and is still sending are not counted overwritten when the ring
/// overwrites them meanwhile: they leave as flushed. Counted so during the post, the counter
/// fell when the post succeeded.
#[test]
fn records_being_flushed_are_not_counted_overwritten() {
    if !kernel_or_skip("recorder: overwritten during a flush") {
        return;
    }
    let receiver = Receiver::start_v4();
    let (port, release, arrived) = gated_endpoint();
    let text = "[[recorder]]\nname = \"small\"\nsize = \"64KiB\"\n\n[[rule]]\n\
                name = \"drop-debug\"\naction = \"drop\"\nrecorder = \"small\"\n\
                [rule.match]\nseverity = \"DEBUG\"\n";
    let dir = TempRules::with_files(&[("r.toml", text)]);
    let mut cfg = agent_config(&dir, &[receiver.port()]);
    cfg.capture_endpoint = Some(format!("http://127.0.0.1:{port}/v1/logs"));
    let agent = start_agent_with(cfg);
    let debug = |from: usize, n: usize| {
        LogsRequestBuilder::new()
            .resource("svc")
            .scope("app")
            .records(
                (from..from + n).map(|i| Rec::new(5, &format!("debug {i:05} {}", "z".repeat(60)))),
            )
            .build()
    };
    send_raw(receiver.port(), &debug(0, 100));
    let first = stats_of(&agent).recorders[0].clone();
    assert_eq!((first.records, first.overwritten), (100, 0), "{first:?}");

    // A flush reads the 100 and posts them; the endpoint holds its answer.
    let (requester, slots) = agent.flush_request(&["small".into()]).unwrap();
    let flush = std::thread::spawn(move || requester.flush(slots).map(|f| f[0].records));
    arrived
        .recv_timeout(WAIT)
        .expect("the flush's post at the endpoint");
    // Meanwhile the ring is overwritten many times over.
    for k in 0..10 {
        send_raw(receiver.port(), &debug(100 + k * 100, 100));
    }
    let during = stats_of(&agent).recorders[0].clone();
    release.send(()).unwrap();
    assert_eq!(flush.join().unwrap().unwrap(), 100);
    let after = stats_of(&agent).recorders[0].clone();
    assert_eq!(after.recorded, 1100, "{after:?}");
    assert_eq!(after.flushed_records, 100, "{after:?}");
    assert_eq!(
        after.overwritten,
        1100 - 100 - after.records,
        "recorded = held + flushed + overwritten: {after:?}"
    );
    assert!(
        during.overwritten <= after.overwritten,
        "overwritten went from {} during the flush to {} after it",
        during.overwritten,
        after.overwritten
    );
}
