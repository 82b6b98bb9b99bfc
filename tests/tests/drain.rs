//! Requests held in the kernel when the agent stops, against the real kernel.
//!
//! dt corks a `POST /v1/logs` request whole; the kernel frees corked bytes when their socket
//! leaves the SockHash (when the programs and maps go). So a client that sends all but the last
//! bytes of a request, then the rest seconds later, must still see its whole request arrive and
//! get its response, however the agent is stopped meanwhile: SIGTERM without pins, `uninstall`
//! with pins, `kill -9` with pins (then a new agent adopting the pins, then uninstalled). And a
//! connection closed mid-request must not leave `in_flight` up for good.
//!
//! Each test has its own receiver port, control socket, pin root and rules directory.
//!
//! Run: `cargo build --release -p dt-agent && cargo test -p dt-tests --test drain --
//! --test-threads=1 --nocapture` (as root).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dt_tests::agent_process::AgentProcess;
use dt_tests::model::rules_toml;
use dt_tests::otlp::{encode, filler, sent_records};
use dt_tests::record::SentRecord;
use dt_tests::*;

/// How long after the stop began the held requests' clients send their last bytes.
const LATE: Duration = Duration::from_secs(9);

struct AbcRequest {
    http: HttpRequest,
    sent: Vec<SentRecord>,
}

/// A request with `per_kind` records of each kind a, b, c (bodies `x<kind>-r<id>-<i> ...`).
fn abc_request(id: usize, per_kind: usize, pad: usize) -> AbcRequest {
    let mut b = LogsRequestBuilder::new().resource("svc").scope("drain");
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

fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-a").body_contains("a-"),
    ]
}

/// A client that has sent all of `req` but its last `keep` bytes, which dt now holds corked.
struct HeldClient {
    client: RawClient,
    rest: Vec<u8>,
    port: u16,
}

/// Sends all of `req` but the last `keep` bytes (head, then the body in two writes) and waits
/// until the agent counts `in_flight` held requests.
fn hold(
    agent: &AgentProcess,
    rx: &Receiver,
    req: &AbcRequest,
    keep: usize,
    in_flight: u64,
) -> HeldClient {
    let bytes = &req.http.bytes;
    let head = req.http.head_len;
    let cut = bytes.len() - keep;
    let mid = head + (cut - head) / 2;
    let mut client = RawClient::connect(rx.addr());
    client.write_chunks(
        &[&bytes[..head], &bytes[head..mid], &bytes[mid..cut]],
        Duration::from_millis(20),
    );
    wait_in_flight(agent, in_flight, Duration::from_secs(5));
    let port = client.local_addr().port();
    HeldClient {
        client,
        rest: bytes[cut..].to_vec(),
        port,
    }
}

impl HeldClient {
    /// Sends the rest and checks the response.
    fn finish(mut self, what: &str) {
        let rest = self.rest.clone();
        self.client.write_chunks(&[&rest], Duration::ZERO);
        let resp = self.client.read_response();
        assert_eq!(resp.status, 200, "{what}: response {resp:?}");
        self.client.finish();
    }
}

fn wait_in_flight(agent: &AgentProcess, want: u64, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let got = agent.stats().totals.in_flight;
        if got == want {
            return;
        }
        assert!(
            t0.elapsed() < timeout,
            "in_flight is {got}, want {want}; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sleeps until `at`.
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// The request arrived whole and untouched, alone on its connection.
fn assert_untouched(what: &str, rx: &Receiver, r: &Received, req: &AbcRequest) {
    assert!(r.decode_error.is_none(), "{what}: {:?}", r.decode_error);
    assert!(r.body == req.http.payload, "{what}: the body differs");
    assert_eq!(
        rx.connection_bytes()[r.conn as usize],
        req.http.bytes,
        "{what}: the connection's bytes differ from what was sent"
    );
}

/// The request arrived decoded, holding exactly the records the rules keep.
fn assert_filtered(what: &str, r: &Received, set: &[RuleSpec], req: &AbcRequest) {
    assert!(r.decode_error.is_none(), "{what}: {:?}", r.decode_error);
    let want = evaluate(set, &req.sent);
    assert!(want.records_dropped > 0, "{what}: the rules must change it");
    let got = r.records();
    assert!(
        got == want.kept,
        "{what}: {} records arrived, the model keeps {}",
        got.len(),
        want.kept.len()
    );
}

/// The arrival on connection `conn` (in accept order), once `n` requests arrived.
fn arrival(rx: &Receiver, n: usize, conn: u64) -> Received {
    let got = rx.wait_for(n, WAIT);
    assert_eq!(got.len(), n, "arrivals");
    got.into_iter()
        .find(|r| r.conn == conn)
        .unwrap_or_else(|| panic!("nothing arrived on connection {conn}"))
}

/// `dt-agent uninstall` for `agent`, started in the background, its output to a file.
fn spawn_uninstall(agent: &AgentProcess) -> (Child, std::path::PathBuf) {
    let out = agent.dir().join("uninstall.out");
    let f = std::fs::File::create(&out).expect("uninstall output");
    let child = agent
        .verb_command("uninstall", &[])
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("fd"))
        .stderr(f)
        .spawn()
        .expect("spawn dt-agent uninstall");
    (child, out)
}

fn wait_child(child: &mut Child, timeout: Duration, what: &str, out: &std::path::Path) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st.code().unwrap_or(-1);
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!(
                "{what} did not exit within {timeout:?}; output:\n{}",
                std::fs::read_to_string(out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------

#[test]
fn drain_sigterm_unpinned_waits_for_held_request() {
    if !kernel_or_skip("drain_sigterm_unpinned_waits_for_held_request") {
        return;
    }
    let set = rules();
    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", &rules_toml(&set))]);
    let mut agent = AgentProcess::new("drain-term", dir.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(1, 10, 40);
    let held = hold(&agent, &rx, &req, 7, 1);
    let port = held.port;

    let stop = Instant::now();
    agent.signal(libc::SIGTERM);
    // It waits, saying whom for; and it still answers.
    agent.wait_log("waiting before detaching", 1, Duration::from_secs(5));
    let me = format!("pid {} (", std::process::id());
    let log = agent.log();
    assert!(
        log.contains(&me) && log.contains(&format!("port {port} -> {}", rx.port())),
        "the log names the sender ({me}) and the ports; log:\n{log}"
    );
    assert_eq!(agent.stats().totals.in_flight, 1);
    // A new request on another connection passes (nothing new is held).
    let other = abc_request(2, 2, 10);
    let mut c2 = RawClient::connect(rx.addr());
    assert_eq!(
        c2.roundtrip(&other.http, &Split::head_then_body(3)).status,
        200
    );
    c2.finish();
    sleep_until(stop + LATE);
    assert!(
        agent.is_running(),
        "the agent must wait for the held request"
    );
    held.finish("held across SIGTERM");
    let st = agent.wait_exit(Duration::from_secs(10));
    let waited = stop.elapsed();
    let log = agent.log();
    assert_eq!(st.code(), Some(0), "exit after SIGTERM; log:\n{log}");
    let r = arrival(&rx, 2, 0);
    assert_untouched("held across SIGTERM", &rx, &r, &req);
    println!(
        "drain_sigterm: a request of {} bytes held {:?} across SIGTERM arrived whole; the agent \
         exited {:?} after the signal",
        req.http.len(),
        LATE,
        waited
    );
}

#[test]
fn drain_uninstall_pinned_waits_for_held_request() {
    if !kernel_or_skip("drain_uninstall_pinned_waits_for_held_request") {
        return;
    }
    let set = rules();
    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", &rules_toml(&set))]);
    let mut agent = AgentProcess::new("drain-uninst", dir.path(), &[rx.port()], true);
    agent.start();
    let req = abc_request(3, 10, 40);
    let held = hold(&agent, &rx, &req, 5, 1);
    let port = held.port;

    let stop = Instant::now();
    let (mut cli, out) = spawn_uninstall(&agent);
    sleep_until(stop + LATE);
    assert!(
        cli.try_wait().expect("try_wait").is_none(),
        "uninstall must wait for the held request; output:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    assert!(
        agent.is_running(),
        "the agent must wait for the held request"
    );
    let said = std::fs::read_to_string(&out).unwrap_or_default();
    let me = format!("pid {} (", std::process::id());
    assert!(
        said.contains("waiting for:") && said.contains(&me) && said.contains(&port.to_string()),
        "uninstall says what it waits for ({me}, port {port}):\n{said}"
    );
    held.finish("held across uninstall");
    let code = wait_child(&mut cli, Duration::from_secs(10), "uninstall", &out);
    let said = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, 0, "uninstall:\n{said}");
    assert!(said.contains("uninstalled"), "{said}");
    let st = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", agent.log());
    assert!(!agent.pin_dir().exists(), "the pins are gone");
    let r = arrival(&rx, 1, 0);
    assert_untouched("held across uninstall", &rx, &r, &req);
    println!(
        "drain_uninstall: uninstall waited {:?} for a held request, which arrived whole; it said:\n{said}",
        stop.elapsed()
    );
}

#[test]
fn drain_kill9_pinned_then_adopt_then_uninstall() {
    if !kernel_or_skip("drain_kill9_pinned_then_adopt_then_uninstall") {
        return;
    }
    let set = rules();
    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", &rules_toml(&set))]);
    let mut agent = AgentProcess::new("drain-kill9", dir.path(), &[rx.port()], true);
    agent.start();
    let req_a = abc_request(4, 10, 40);
    let req_b = abc_request(5, 10, 40);
    let a = hold(&agent, &rx, &req_a, 6, 1);
    let b = hold(&agent, &rx, &req_b, 6, 2);
    let port_b = b.port;

    let stop = Instant::now();
    let st = agent.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    // No agent: the pinned maps keep the program attached, and the requests held.
    assert_eq!(agent.stats().totals.in_flight, 2, "read from the pins");
    // A new agent adopts the pins meanwhile.
    agent.start();
    assert!(
        agent.log().contains("adopted pinned state"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.stats().totals.in_flight, 2);
    // A finishes while the new agent runs: it is filtered as the rules say.
    sleep_until(stop + Duration::from_millis(4500));
    a.finish("A, held across kill -9 and the adoption");
    let r = arrival(&rx, 1, 0);
    assert_filtered("A, held across kill -9 and the adoption", &r, &set, &req_a);
    // Then the new agent is uninstalled; it waits for B.
    let (mut cli, out) = spawn_uninstall(&agent);
    // It names B's connection (polled: on a loaded machine the steps above can take seconds).
    let names_b = format!("port {port_b} -> {}", rx.port());
    let t0 = Instant::now();
    let mut said = String::new();
    while t0.elapsed() < Duration::from_secs(20) {
        said = std::fs::read_to_string(&out).unwrap_or_default();
        if said.contains(&names_b) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        said.contains(&names_b),
        "uninstall names B's connection:\n{said}"
    );
    sleep_until(stop + LATE);
    assert!(
        cli.try_wait().expect("try_wait").is_none(),
        "uninstall must wait for B; output:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    b.finish("B, held across kill -9, the adoption and uninstall");
    let code = wait_child(&mut cli, Duration::from_secs(10), "uninstall", &out);
    let said = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, 0, "uninstall:\n{said}");
    let st = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", agent.log());
    assert!(!agent.pin_dir().exists(), "the pins are gone");
    let r = arrival(&rx, 2, 1);
    assert_untouched("B, held across uninstall", &rx, &r, &req_b);
    println!(
        "drain_kill9: A arrived filtered after kill -9 and adoption, B whole after uninstall, \
         {:?} after the kill; uninstall said:\n{said}",
        stop.elapsed()
    );
}

#[test]
fn drain_connection_closed_mid_request_releases_in_flight() {
    if !kernel_or_skip("drain_connection_closed_mid_request_releases_in_flight") {
        return;
    }
    let set = rules();
    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", &rules_toml(&set))]);
    let mut agent = AgentProcess::new("drain-close", dir.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(6, 10, 40);

    // A whole request held, then its connection closed.
    let held = hold(&agent, &rx, &req, 9, 1);
    drop(held);
    wait_in_flight(&agent, 0, Duration::from_secs(5));
    // A head not all sent yet is held too; and released the same way.
    let mut c = RawClient::connect(rx.addr());
    c.write_chunks(&[b"POST /v1/logs HTTP/1.1\r\nHost: x\r\n"], Duration::ZERO);
    wait_in_flight(&agent, 1, Duration::from_secs(5));
    drop(c);
    wait_in_flight(&agent, 0, Duration::from_secs(5));
    let s = agent.stats();
    assert_eq!(s.totals.released, 2, "{:#?}", s.totals);

    // Nothing is held: a stop does not wait.
    let t0 = Instant::now();
    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    let log = agent.log();
    assert_eq!(st.code(), Some(0), "log:\n{log}");
    assert!(
        took < Duration::from_secs(1),
        "the stop took {took:?}; log:\n{log}"
    );
    assert!(!log.contains("waiting before detaching"), "log:\n{log}");
    println!("drain_close: in_flight back to 0 after two closes; the stop took {took:?}");
}

#[test]
fn drain_second_sigterm_stops_at_once() {
    if !kernel_or_skip("drain_second_sigterm_stops_at_once") {
        return;
    }
    let set = rules();
    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", &rules_toml(&set))]);
    let mut agent = AgentProcess::new("drain-force", dir.path(), &[rx.port()], false);
    agent.start();
    let req = abc_request(7, 10, 40);
    let held = hold(&agent, &rx, &req, 4, 1);
    agent.signal(libc::SIGTERM);
    agent.wait_log("waiting before detaching", 1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.is_running(), "the first signal waits");
    // The operator insists: the agent detaches at once, and says the held request is lost.
    let t0 = Instant::now();
    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(Duration::from_secs(5));
    let took = t0.elapsed();
    let log = agent.log();
    assert_eq!(st.code(), Some(0), "log:\n{log}");
    assert!(took < Duration::from_secs(2), "took {took:?}; log:\n{log}");
    assert!(
        log.contains("the held requests are lost") && log.contains(&format!("port {}", held.port)),
        "log:\n{log}"
    );
    println!("drain_force: a second SIGTERM stopped the agent in {took:?}");
    drop(held);
}

/// A sender that never finishes its request would make `uninstall` wait for ever: `uninstall
/// --now` (here while a plain `uninstall` waits) detaches and unpins at once, saying which held
/// request is lost, and so does the `uninstall` that waited; the agent exits.
#[test]
fn drain_uninstall_now_stops_waiting() {
    if !kernel_or_skip("drain_uninstall_now_stops_waiting") {
        return;
    }
    let set = rules();
    let rx = Receiver::start_v4();
    let dir = TempRules::with_files(&[("50-test.toml", &rules_toml(&set))]);
    let mut agent = AgentProcess::new("drain-now", dir.path(), &[rx.port()], true);
    agent.start();
    let req = abc_request(9, 10, 40);
    let held = hold(&agent, &rx, &req, 5, 1);
    let (mut waiting, out) = spawn_uninstall(&agent);
    agent.wait_log(
        "uninstall: every request passes now",
        1,
        Duration::from_secs(5),
    );
    // The waiting `uninstall` prints it once the agent's answer reaches it, which may be
    // after the agent logged it.
    let t0 = Instant::now();
    let mut said = String::new();
    while t0.elapsed() < Duration::from_secs(5) {
        said = std::fs::read_to_string(&out).unwrap_or_default();
        if said.contains("uninstall --now") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        said.contains("uninstall --now"),
        "it says how to stop waiting:\n{said}"
    );
    let t0 = Instant::now();
    let o = agent.verb("uninstall", &["--now"]);
    let took = t0.elapsed();
    let text = dt_tests::agent_process::output_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("detached at once (--now); lost: 1 request")
            && text.contains(&format!("port {}", held.port)),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let st = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", agent.log());
    assert!(!agent.pin_dir().exists(), "the pins are gone");
    // The waiting `uninstall` ends too, saying its wait was cut short and what was lost (the
    // agent stays up a moment to tell it), not as after a wait that ended well.
    let code = wait_child(&mut waiting, Duration::from_secs(10), "uninstall", &out);
    let said = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(code, 0, "{said}");
    let cut = said
        .lines()
        .find(|l| l.starts_with("the wait was cut short by `dt-agent uninstall --now`"))
        .unwrap_or_else(|| panic!("no cut-short line:\n{said}"));
    assert!(
        cut.contains("detached at once; lost: 1 request")
            && cut.contains(&format!("port {}", held.port)),
        "{said}"
    );
    assert!(
        agent
            .log()
            .contains("uninstall --now: detaching at once; the held requests are lost"),
        "log:\n{}",
        agent.log()
    );
    drop(held);
}
