//! Network faults production throws at dt, against the real kernel, with `dt-agent run` as a
//! process:
//!
//! 1. A collector that resets connections (RST) while dt holds their requests corked: before any
//!    byte, in the middle of a head, after the head, in the middle of a body, after a first
//!    request was served, and while the client is still writing. The clients see an error or
//!    EOF, nothing stays held (`in_flight` back to 0), and fresh connections are filtered as
//!    before.
//! 2. Send-buffer pressure: clients with a tiny `SO_SNDBUF` (half of them writing non-blocking,
//!    as async runtimes do) write 100–200 KB requests to a collector with a tiny `SO_RCVBUF`
//!    that reads in small pieces with pauses. Every request must arrive either filtered exactly
//!    as the rules say or byte for byte as sent, never corrupted, and the counters add up.
//! 3. A thousand short connections while `dt-agent push` flips the rule set every ~20 ms: every
//!    request gets its 200 and arrives as one of the two sets makes it (or untouched, counted
//!    `passthrough.generation`), never a mix.
//!
//! Each test has its own ports, control socket, pin root and rules directory.
//!
//! Run: `cargo build -p dt-agent && cargo test -p dt-tests --test faults_net -- --nocapture
//! --test-threads=1` (as root).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dt_agent::Stats;
use dt_tests::agent_process::{AgentProcess, output_text};
use dt_tests::model::{Expected, rules_toml};
use dt_tests::otlp::{encode, filler, sent_records, sized_request};
use dt_tests::record::{ReceivedRecord, SentRecord, flatten};
use dt_tests::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ------------------------------------------------------------------------------------------
// Sockets (std has no SO_LINGER, SO_SNDBUF or SO_RCVBUF setters; socket2 is not a dependency)

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized for an int option.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A new IPv4 TCP socket.
fn tcp_socket() -> OwnedFd {
    // SAFETY: socket(2) has no memory preconditions; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A client connected to `addr` whose `SO_SNDBUF` was set to `sndbuf` before the connect.
fn connect_with_sndbuf(addr: SocketAddrV4, sndbuf: libc::c_int) -> TcpStream {
    let fd = tcp_socket();
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &sndbuf);
    let sa = sockaddr_in(addr);
    loop {
        // SAFETY: `sa` is a valid sockaddr_in of the size passed.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), ErrorKind::Interrupted, "connect {addr}: {e}");
    }
    TcpStream::from(fd)
}

/// A listener on `127.0.0.1:<free port>` whose `SO_RCVBUF` was set to `rcvbuf` before
/// `listen` (accepted sockets inherit it, and the window scale is chosen from it).
fn listener_with_rcvbuf(rcvbuf: libc::c_int) -> TcpListener {
    let fd = tcp_socket();
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf);
    let sa = sockaddr_in(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    // SAFETY: `sa` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    // SAFETY: listen(2) on a bound socket we own.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), 128) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    TcpListener::from(fd)
}

/// Closes `s` with a reset: `SO_LINGER` {on, 0} and then close(2) sends RST, not FIN.
fn reset(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l);
    drop(s);
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("want IPv4, got {a}"),
    }
}

// ------------------------------------------------------------------------------------------
// A minimal collector side: one HTTP/1.1 request at a time off a TcpStream (Content-Length
// framing only, which is all the clients here send).

const OK_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";

/// One request as it came off the wire.
struct WireRequest {
    /// Head and body, exactly as read.
    bytes: Vec<u8>,
    head_len: usize,
}

impl WireRequest {
    fn body(&self) -> &[u8] {
        &self.bytes[self.head_len..]
    }
}

/// Reads requests off an accepted stream, `read_size()` bytes at most per read, sleeping
/// `pause` after each read.
struct ServerConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl ServerConn {
    fn new(stream: TcpStream) -> ServerConn {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        ServerConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    fn fill(&mut self, max: usize, pause: Duration) -> std::io::Result<usize> {
        let mut tmp = vec![0u8; max.max(1)];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next request, or `None` at a clean EOF between requests.
    fn read_request(
        &mut self,
        mut read_size: impl FnMut() -> usize,
        pause: Duration,
    ) -> Result<Option<WireRequest>, String> {
        let head_len = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            match self.fill(read_size(), pause) {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(format!(
                        "EOF inside a head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("reading a head: {e}")),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.buf[..head_len]) {
            Ok(httparse::Status::Complete(n)) if n == head_len => {}
            other => {
                return Err(format!(
                    "bad head ({other:?}): {:?}",
                    String::from_utf8_lossy(&self.buf[..head_len])
                ));
            }
        }
        let lens: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        let [len] = lens[..] else {
            return Err(format!("want one Content-Length, got {lens:?}"));
        };
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("bad Content-Length {:?}", String::from_utf8_lossy(len)))?;
        while self.buf.len() < head_len + len {
            match self.fill(read_size(), pause) {
                Ok(0) => {
                    return Err(format!(
                        "EOF inside a body: {} of {len} bytes",
                        self.buf.len() - head_len
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("reading a body: {e}")),
            }
        }
        let bytes: Vec<u8> = self.buf.drain(..head_len + len).collect();
        Ok(Some(WireRequest { bytes, head_len }))
    }

    fn respond_ok(&mut self) -> std::io::Result<()> {
        self.stream.write_all(OK_RESPONSE)
    }

    /// Whether any byte is waiting to be read (without blocking).
    fn has_pending_bytes(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        let r = self.stream.peek(&mut b);
        self.stream.set_nonblocking(false).expect("blocking");
        match r {
            Ok(n) => n > 0,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("peek: {e}"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response head off a client stream (the servers here answer without a body),
/// waiting up to the stream's read timeout. A blocking read on a hooked socket can return
/// EAGAIN early, when send-buffer space wakes it (the kernel's sockmap receive path; see
/// `dt_tests::client::RawClient`): it is read again, as real clients do.
fn read_response_head(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    let wait = s
        .read_timeout()
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(30));
    let deadline = Instant::now() + wait;
    while find(&buf, b"\r\n\r\n").is_none() {
        match s.read(&mut tmp) {
            Ok(0) => return Err("EOF before a response".into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {}
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

// ------------------------------------------------------------------------------------------
// Requests, rules, checks

/// A request as sent, with its records.
struct SentRequest {
    http: HttpRequest,
    sent: Vec<SentRecord>,
}

impl SentRequest {
    fn of(logs: &ExportLogsServiceRequest) -> SentRequest {
        SentRequest {
            http: HttpRequestBuilder::logs(encode(logs)).build(),
            sent: sent_records(logs),
        }
    }

    fn records(&self) -> Vec<ReceivedRecord> {
        self.sent.iter().map(|s| s.record.clone()).collect()
    }
}

/// `n` records of service `service` cycling through TRACE, DEBUG, INFO, WARN, DEBUG, ERROR,
/// bodies `<service>-<i> <pad bytes>`.
fn mixed_logs(service: &str, n: usize, pad: usize) -> ExportLogsServiceRequest {
    const SEVERITIES: [i32; 6] = [1, 5, 9, 13, 7, 17];
    let mut b = LogsRequestBuilder::new().resource(service).scope("faults");
    for i in 0..n {
        let sev = SEVERITIES[i % SEVERITIES.len()];
        let body = format!("{service}-{i} {}", filler(i, pad));
        b = b.record(Rec::new(sev, &body).attr("i", &i.to_string()));
    }
    b.build()
}

fn drop_debug() -> Vec<RuleSpec> {
    vec![
        RuleSpec::count("count-all"),
        RuleSpec::drop("drop-debug").severity("<=DEBUG", 1..=8),
    ]
}

/// Polls `stats` until `ok` holds; panics with the last stats and the log after `timeout`.
fn wait_stats(
    agent: &AgentProcess,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Stats) -> bool,
) -> Stats {
    let t0 = Instant::now();
    loop {
        let s = agent.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < timeout,
            "{what}: not reached within {timeout:?}; totals {:#?}\nlog:\n{}",
            s.totals,
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The agent still runs and its log has no panic.
fn assert_agent_healthy(agent: &mut AgentProcess, what: &str) {
    assert!(
        agent.is_running(),
        "{what}: the agent exited; log:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        !log.contains("panicked") && !log.to_ascii_lowercase().contains("panic:"),
        "{what}: the agent's log shows a panic:\n{log}"
    );
}

/// `dt-agent push` prints `pushed N file(s): generation G`.
fn pushed_generation(o: &std::process::Output) -> Option<u64> {
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
        l.rsplit_once("generation ")
            .and_then(|(_, g)| g.trim().parse().ok())
    })
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v != 0)
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. The collector resets connections while requests are corked

/// Where a connection is when the collector resets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ResetAt {
    /// Before the client wrote anything; the client writes its request after the reset.
    BeforeAnyByte,
    /// Part of the request line and headers sent (held as an incomplete head).
    MidHead,
    /// The whole head sent, no body byte.
    AfterHead,
    /// The head and part of the body sent.
    MidBody,
    /// A first request served (filtered, answered 200), then part of a second one sent.
    SecondMidBody,
    /// While the client is still writing the body (phase B: not in `ALL`).
    WhileWriting,
}

impl ResetAt {
    const ALL: [ResetAt; 5] = [
        ResetAt::BeforeAnyByte,
        ResetAt::MidHead,
        ResetAt::AfterHead,
        ResetAt::MidBody,
        ResetAt::SecondMidBody,
    ];

    /// Whether dt holds a request of the connection when it is reset.
    fn held(self) -> bool {
        !matches!(self, ResetAt::BeforeAnyByte | ResetAt::WhileWriting)
    }
}

/// What a client saw after its connection was reset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ClientSaw {
    WriteError(String),
    ReadError(String),
    Eof,
    /// Wrong: a response to a request the collector never read.
    Response(String),
    /// Wrong: nothing at all (the client is wedged).
    NothingWithin(Duration),
}

/// Writes `rest` (if any) and waits for a response, as a client whose connection was reset.
/// An early EAGAIN (see [`read_response_head`]) is read again until the read timeout, as real
/// clients do: the reset that woke the read is the next read's error.
fn after_reset(client: &mut TcpStream, rest: &[&[u8]]) -> ClientSaw {
    for piece in rest {
        if let Err(e) = client.write_all(piece) {
            return ClientSaw::WriteError(format!("{:?}", e.kind()));
        }
    }
    let mut b = [0u8; 256];
    let wait = client
        .read_timeout()
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(10));
    let deadline = Instant::now() + wait;
    let read = loop {
        match client.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {}
            r => break r,
        }
    };
    match read {
        Ok(0) => ClientSaw::Eof,
        Ok(n) => ClientSaw::Response(String::from_utf8_lossy(&b[..n]).into_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            ClientSaw::NothingWithin(client.read_timeout().ok().flatten().unwrap_or_default())
        }
        Err(e) => ClientSaw::ReadError(format!("{:?}", e.kind())),
    }
}

fn client_to(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_nodelay(true).expect("nodelay");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    c.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    c
}

/// The collector's side of the next connection.
fn accept(listener: &TcpListener) -> ServerConn {
    let (s, _) = listener.accept().expect("accept");
    ServerConn::new(s)
}

/// The request arrived with exactly the records `rules` keep, Content-Length matching.
fn check_filtered(what: &str, got: &WireRequest, rules: &[RuleSpec], req: &SentRequest) {
    let logs = ExportLogsServiceRequest::decode(got.body())
        .unwrap_or_else(|e| panic!("{what}: the body does not decode: {e}"));
    let want = evaluate(rules, &req.sent);
    assert!(want.records_dropped > 0, "{what}: the rules must change it");
    assert!(
        flatten(&logs) == want.kept,
        "{what}: {} records arrived, the model keeps {}",
        flatten(&logs).len(),
        want.kept.len()
    );
}

#[test]
fn collector_resets_connections_while_requests_are_corked() {
    if !kernel_or_skip("collector_resets_connections_while_requests_are_corked") {
        return;
    }
    const PER_KIND: usize = 8;
    const RACING: usize = 20;
    let set = drop_debug();
    let collector = net::listener_v4();
    let caddr = collector.local_addr().unwrap();
    let rx = Receiver::start_v4();
    let dir = TempRules::from_rules(&set);
    let mut agent = AgentProcess::new(
        "faults-reset",
        dir.path(),
        &[caddr.port(), rx.port()],
        false,
    );
    let s0 = agent.start();
    let t_test = Instant::now();

    // Phase A: PER_KIND connections of each kind, brought to their point, then all reset.
    struct Victim {
        kind: ResetAt,
        client: TcpStream,
        server: ServerConn,
        /// What the client still has to write.
        rest: Vec<Vec<u8>>,
    }
    let mut victims = Vec::new();
    let mut n = 0;
    for _ in 0..PER_KIND {
        for kind in ResetAt::ALL {
            n += 1;
            let req = SentRequest::of(&mixed_logs(&format!("reset-{n}"), 40, 60));
            let (bytes, head) = (&req.http.bytes, req.http.head_len);
            let mid = head + (bytes.len() - head) / 2;
            let mut client = client_to(caddr);
            let mut server = accept(&collector);
            let rest: Vec<Vec<u8>> = match kind {
                ResetAt::BeforeAnyByte => vec![bytes[..head].to_vec(), bytes[head..].to_vec()],
                ResetAt::MidHead => {
                    client.write_all(&bytes[..head / 2]).unwrap();
                    vec![bytes[head / 2..].to_vec()]
                }
                ResetAt::AfterHead => {
                    client.write_all(&bytes[..head]).unwrap();
                    vec![bytes[head..].to_vec()]
                }
                ResetAt::MidBody => {
                    client.write_all(&bytes[..head]).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                    client.write_all(&bytes[head..mid]).unwrap();
                    vec![bytes[mid..].to_vec()]
                }
                ResetAt::SecondMidBody => {
                    let first = SentRequest::of(&mixed_logs(&format!("served-{n}"), 30, 40));
                    let fb = &first.http.bytes;
                    client.write_all(&fb[..first.http.head_len]).unwrap();
                    client.write_all(&fb[first.http.head_len..]).unwrap();
                    let got = server
                        .read_request(|| 65536, Duration::ZERO)
                        .unwrap_or_else(|e| panic!("first request of connection {n}: {e}"))
                        .expect("a first request");
                    check_filtered(
                        &format!("first request of connection {n}"),
                        &got,
                        &set,
                        &first,
                    );
                    server.respond_ok().expect("respond");
                    let head_line = read_response_head(&mut client).expect("first response");
                    assert!(head_line.starts_with("HTTP/1.1 200"), "{head_line}");
                    client.write_all(&bytes[..head]).unwrap();
                    client.write_all(&bytes[head..mid]).unwrap();
                    vec![bytes[mid..].to_vec()]
                }
                ResetAt::WhileWriting => unreachable!("phase B"),
            };
            victims.push(Victim {
                kind,
                client,
                server,
                rest,
            });
        }
    }
    let held = victims.iter().filter(|v| v.kind.held()).count() as u64;
    let s_held = wait_stats(
        &agent,
        "the victims' requests held",
        Duration::from_secs(10),
        |s| s.totals.in_flight == held,
    );
    // How long the longest of them has been held: at least the wait since they all were.
    std::thread::sleep(Duration::from_millis(200));
    let longest = agent.stats().totals.in_flight_longest_ms;
    assert!(
        (200..60_000).contains(&longest),
        "in_flight_longest_ms {longest} with {held} held"
    );
    // Held means held: the collector has not seen a byte of them.
    for (i, v) in victims.iter().enumerate() {
        assert!(
            !v.server.has_pending_bytes(),
            "victim {i} ({:?}): the collector got bytes of a request dt should hold",
            v.kind
        );
    }
    // The collector resets every one of them.
    let mut clients = Vec::new();
    for v in victims {
        reset(v.server.stream);
        clients.push((v.kind, v.client, v.rest));
    }
    let mut saw: BTreeMap<(ResetAt, ClientSaw), usize> = BTreeMap::new();
    for (kind, mut client, rest) in clients {
        let pieces: Vec<&[u8]> = rest.iter().map(|r| &r[..]).collect();
        *saw.entry((kind, after_reset(&mut client, &pieces)))
            .or_default() += 1;
    }
    let s_a = wait_stats(
        &agent,
        "in_flight back to 0 after the resets",
        Duration::from_secs(10),
        |s| s.totals.in_flight == 0,
    );

    // Phase B: resets racing the client's writes (the body in 40 writes 1 ms apart, the reset
    // 0-35 ms after the head).
    let mut rng = ChaCha8Rng::seed_from_u64(0xfa17);
    for j in 0..RACING {
        let req = SentRequest::of(&mixed_logs(&format!("race-{j}"), 60, 60));
        let mut client = client_to(caddr);
        let server = accept(&collector);
        let delay = Duration::from_millis(rng.random_range(0..35));
        let writer = std::thread::spawn(move || {
            let (bytes, head) = (&req.http.bytes, req.http.head_len);
            let mut cuts: Vec<usize> = (0..=40)
                .map(|i| head + (bytes.len() - head) * i / 40)
                .collect();
            cuts.insert(0, 0);
            let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if let Err(e) = client.write_all(p) {
                    return ClientSaw::WriteError(format!("{:?}", e.kind()));
                }
            }
            after_reset(&mut client, &[])
        });
        std::thread::sleep(delay);
        reset(server.stream);
        let outcome = writer.join().expect("racing writer");
        *saw.entry((ResetAt::WhileWriting, outcome)).or_default() += 1;
    }
    let s_b = wait_stats(
        &agent,
        "in_flight back to 0 after the racing resets",
        Duration::from_secs(10),
        |s| s.totals.in_flight == 0,
    );

    // Phase C: fresh traffic, to the receiver and to the collector that reset, filtered as
    // usual.
    let mut expected = Expected::default();
    let mut sent_total = 0usize;
    let mut reqs = Vec::new();
    for c in 0..20 {
        let mut client = RawClient::connect(rx.addr());
        for q in 0..2 {
            let req = SentRequest::of(&mixed_logs(&format!("after-{c}-{q}"), 30, 50));
            let resp = client.roundtrip(&req.http, &Split::head_then_body(3));
            assert_eq!(
                resp.status, 200,
                "after the resets: connection {c} request {q}"
            );
            expected.merge(&evaluate(&set, &req.sent));
            sent_total += 1;
            reqs.push(req);
        }
        client.finish();
    }
    let got = rx.wait_for(sent_total, WAIT);
    rx.assert_no_more(sent_total, Duration::from_millis(100));
    for (i, (r, req)) in got.iter().zip(&reqs).enumerate() {
        assert!(
            r.decode_error.is_none(),
            "arrival {i}: {:?}",
            r.decode_error
        );
        let want = evaluate(&set, &req.sent);
        assert!(
            r.records() == want.kept,
            "arrival {i}: {} records, the model keeps {}",
            r.records().len(),
            want.kept.len()
        );
    }
    for k in 0..3 {
        let req = SentRequest::of(&mixed_logs(&format!("collector-again-{k}"), 30, 50));
        let mut client = client_to(caddr);
        let mut server = accept(&collector);
        let (b, h) = (&req.http.bytes, req.http.head_len);
        client.write_all(&b[..h]).unwrap();
        client.write_all(&b[h..]).unwrap();
        let got = server
            .read_request(|| 65536, Duration::ZERO)
            .unwrap_or_else(|e| panic!("collector again {k}: {e}"))
            .expect("a request");
        check_filtered(&format!("collector again {k}"), &got, &set, &req);
        server.respond_ok().unwrap();
        let head = read_response_head(&mut client).expect("response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        expected.merge(&evaluate(&set, &req.sent));
        sent_total += 1;
    }
    let s_c = wait_stats(
        &agent,
        "in_flight 0 at the end",
        Duration::from_secs(10),
        |s| s.totals.in_flight == 0,
    );
    assert_agent_healthy(&mut agent, "after the resets");

    // The clients saw errors or EOF, never a response, never silence.
    let bad: Vec<_> = saw
        .iter()
        .filter(|((_, s), _)| matches!(s, ClientSaw::Response(_) | ClientSaw::NothingWithin(_)))
        .collect();
    assert!(
        bad.is_empty(),
        "clients of reset connections saw: {bad:?} (all: {saw:?})"
    );

    let (t0, ta, tb, tc) = (&s0.totals, &s_a.totals, &s_b.totals, &s_c.totals);
    let mut problems = Vec::new();
    if ta.released - t0.released < held {
        problems.push(format!(
            "released after phase A: {} (from {}), want at least the {held} held",
            ta.released, t0.released
        ));
    }
    if s_held.totals.released != t0.released {
        problems.push(format!(
            "released before the resets: {} want {}",
            s_held.totals.released, t0.released
        ));
    }
    // Phase C's counters, as deltas: exactly the model, no passthrough, nothing failed.
    let mut check = |name: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("phase C {name}: {got} want {want}"));
        }
    };
    check("requests", tc.requests - tb.requests, sent_total as u64);
    check(
        "log_requests",
        tc.log_requests - tb.log_requests,
        sent_total as u64,
    );
    check("records", tc.records - tb.records, expected.records);
    check(
        "records_dropped",
        tc.records_dropped - tb.records_dropped,
        expected.records_dropped,
    );
    check("edit_failures", tc.edit_failures - tb.edit_failures, 0);
    check("released", tc.released - tb.released, 0);
    let pt = delta(&tc.passthrough, &tb.passthrough);
    if !pt.is_empty() {
        problems.push(format!("phase C passthrough moved: {pt:?}"));
    }
    assert!(
        problems.is_empty(),
        "counters:\n  {}\nbefore {t0:#?}\nafter A {ta:#?}\nafter B {tb:#?}\nafter C {tc:#?}",
        problems.join("\n  ")
    );
    println!(
        "collector_resets: {} connections reset at a held point ({held} held, in_flight back to \
         0), {RACING} reset racing the client's writes; released {} in all; passthrough over \
         the resets {:?}; the clients saw {saw:?}; then {sent_total} requests filtered as the \
         model says; {:?} in all",
        ResetAt::ALL.len() * PER_KIND,
        tc.released - t0.released,
        delta(&tb.passthrough, &t0.passthrough),
        t_test.elapsed()
    );
}

// ------------------------------------------------------------------------------------------
// 2. Send-buffer pressure

/// `write_all` that also works on a non-blocking socket: on EAGAIN it waits (at most 30 s) in
/// poll(2) until the socket is writable.
fn write_all_polling(s: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                let rc = unsafe { libc::poll(&mut p, 1, 30_000) };
                if rc == 0 {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        "not writable within 30 s",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How client `c` writes: every other one as async runtimes do (Go's netpoller, tokio, Node):
/// non-blocking, waiting in poll(2) on EAGAIN.
fn client_mode(c: usize) -> &'static str {
    if c % 2 == 1 {
        "non-blocking"
    } else {
        "blocking"
    }
}

/// How the slow collector got one request.
struct SlowArrival {
    conn: usize,
    req: WireRequest,
}

#[test]
fn socket_buffer_pressure_keeps_requests_whole() {
    if !kernel_or_skip("socket_buffer_pressure_keeps_requests_whole") {
        return;
    }
    const CONNS: usize = 4;
    const PER_CONN: usize = 5;
    const SNDBUF: libc::c_int = 4096;
    const RCVBUF: libc::c_int = 4096;
    let set = drop_debug();
    let collector = listener_with_rcvbuf(RCVBUF);
    let caddr = v4(collector.local_addr().unwrap());
    let dir = TempRules::from_rules(&set);
    let mut agent = AgentProcess::new("faults-bufpress", dir.path(), &[caddr.port()], false);
    let s0 = agent.start();
    let t_test = Instant::now();

    // The requests: 100-200 KB, records of 150-600 bytes, every other one DEBUG.
    let mut rng = ChaCha8Rng::seed_from_u64(0xb0ff);
    let mut plans: Vec<Vec<(SentRequest, Vec<usize>)>> = Vec::new();
    for c in 0..CONNS {
        let mut conn = Vec::new();
        for q in 0..PER_CONN {
            let size = rng.random_range(100_000..200_000);
            let body = rng.random_range(150..600);
            let logs = sized_request(&format!("bulk-c{c}-q{q}"), size, body, 2);
            let req = SentRequest::of(&logs);
            // Write boundaries: the head alone, then the body in 2-8 writes of random sizes;
            // every third request in one write of everything.
            let (n, h) = (req.http.len(), req.http.head_len);
            let mut cuts = vec![0, n];
            if q % 3 != 2 {
                cuts.push(h);
                for _ in 0..rng.random_range(1..8) {
                    cuts.push(rng.random_range(h + 1..n));
                }
            }
            cuts.sort_unstable();
            cuts.dedup();
            conn.push((req, cuts));
        }
        plans.push(conn);
    }
    let sent_bytes: usize = plans.iter().flatten().map(|(r, _)| r.http.len()).sum();

    // The collector: each connection read 256-4096 bytes at a time, 1 ms apart.
    let arrivals: Arc<Mutex<Vec<SlowArrival>>> = Arc::default();
    let server_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = {
        let (arrivals, server_errors) = (arrivals.clone(), server_errors.clone());
        std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for conn in 0..CONNS {
                let (s, _) = collector.accept().expect("accept");
                let (arrivals, server_errors) = (arrivals.clone(), server_errors.clone());
                handlers.push(std::thread::spawn(move || {
                    let rcvbuf = getsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF);
                    let mut sc = ServerConn::new(s);
                    let mut rng = ChaCha8Rng::seed_from_u64(conn as u64);
                    loop {
                        match sc
                            .read_request(|| rng.random_range(256..=4096), Duration::from_millis(1))
                        {
                            Ok(None) => break,
                            Ok(Some(req)) => {
                                arrivals.lock().unwrap().push(SlowArrival { conn, req });
                                if let Err(e) = sc.respond_ok() {
                                    server_errors
                                        .lock()
                                        .unwrap()
                                        .push(format!("connection {conn}: respond: {e}"));
                                    break;
                                }
                            }
                            Err(e) => {
                                server_errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("connection {conn}: {e}"));
                                break;
                            }
                        }
                    }
                    rcvbuf
                }));
            }
            handlers
                .into_iter()
                .map(|h| h.join().expect("collector connection"))
                .collect::<Vec<_>>()
        })
    };

    // The clients, one thread per connection.
    let clients: Vec<_> = plans
        .iter()
        .enumerate()
        .map(|(c, conn)| {
            let conn: Vec<(Vec<u8>, Vec<usize>)> = conn
                .iter()
                .map(|(r, cuts)| (r.http.bytes.clone(), cuts.clone()))
                .collect();
            std::thread::spawn(move || -> Result<libc::c_int, String> {
                let mut s = connect_with_sndbuf(caddr, SNDBUF);
                let sndbuf = getsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF);
                s.set_nodelay(true).expect("nodelay");
                s.set_read_timeout(Some(Duration::from_secs(15)))
                    .expect("read timeout");
                s.set_write_timeout(Some(Duration::from_secs(15)))
                    .expect("write timeout");
                let nonblocking = client_mode(c) == "non-blocking";
                for (q, (bytes, cuts)) in conn.iter().enumerate() {
                    s.set_nonblocking(nonblocking).expect("nonblocking");
                    for w in cuts.windows(2) {
                        write_all_polling(&mut s, &bytes[w[0]..w[1]]).map_err(|e| {
                            format!(
                                "client {c} ({}) request {q}: write at {}: {e}",
                                client_mode(c),
                                w[0]
                            )
                        })?;
                    }
                    s.set_nonblocking(false).expect("blocking");
                    let head = read_response_head(&mut s)
                        .map_err(|e| format!("client {c} ({}) request {q}: {e}", client_mode(c)))?;
                    if !head.starts_with("HTTP/1.1 200") {
                        return Err(format!("client {c} request {q}: {head}"));
                    }
                }
                s.shutdown(std::net::Shutdown::Write).ok();
                Ok(sndbuf)
            })
        })
        .collect();
    let client_results: Vec<_> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let rcvbufs = server.join().expect("collector thread");
    let mut problems: Vec<String> = client_results
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    problems.extend(
        server_errors
            .lock()
            .unwrap()
            .iter()
            .map(|e| format!("collector {e}")),
    );
    let sndbufs: Vec<Option<libc::c_int>> = client_results
        .iter()
        .map(|r| r.as_ref().ok().copied())
        .collect();

    // Every arrival: filtered exactly as the model says, or byte for byte as sent.
    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap());
    let by_service: BTreeMap<String, (usize, &SentRequest)> = plans
        .iter()
        .enumerate()
        .flat_map(|(c, conn)| conn.iter().map(move |(r, _)| (c, r)))
        .map(|(c, r)| (r.sent[0].record.service.clone(), (c, r)))
        .collect();
    let mut expected = Expected::default();
    let (mut n_filtered, mut n_untouched) = (0u64, 0u64);
    let mut vanished = 0u64;
    let mut received_bytes = 0usize;
    for (i, a) in arrivals.iter().enumerate() {
        received_bytes += a.req.bytes.len();
        let what = format!("arrival {i} (collector connection {})", a.conn);
        let logs = match ExportLogsServiceRequest::decode(a.req.body()) {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!(
                    "{what}: CORRUPT, its {}-byte body does not decode: {e}",
                    a.req.body().len()
                ));
                continue;
            }
        };
        let got = flatten(&logs);
        let Some(service) = got.first().map(|r| r.service.clone()) else {
            problems.push(format!("{what}: no records"));
            continue;
        };
        let Some(&(c, req)) = by_service.get(&service) else {
            problems.push(format!("{what}: unknown service {service}"));
            continue;
        };
        let what = format!("{what}, {service} from client {c} ({})", client_mode(c));
        if a.req.bytes == req.http.bytes {
            n_untouched += 1;
            continue;
        }
        let want = evaluate(&set, &req.sent);
        if got == want.kept {
            n_filtered += 1;
            vanished += (req.sent.len() - got.len()) as u64;
            expected.merge(&want);
        } else {
            problems.push(format!(
                "{what}: CORRUPT or mixed: {} records arrived, {} sent, the model keeps {}",
                got.len(),
                req.sent.len(),
                want.kept.len()
            ));
        }
    }
    if arrivals.len() != CONNS * PER_CONN {
        problems.push(format!(
            "{} of {} requests arrived whole",
            arrivals.len(),
            CONNS * PER_CONN
        ));
    }
    let s = wait_stats(&agent, "in_flight 0", Duration::from_secs(10), |s| {
        s.totals.in_flight == 0
    });
    assert_agent_healthy(&mut agent, "after the pressure");
    // The counters must add up to what arrived (checked with the arrivals, so that one failure
    // shows both).
    let t = &s.totals;
    let passthrough = delta(&t.passthrough, &s0.totals.passthrough);
    let pt_total: u64 = passthrough.values().sum();
    let mut check = |name: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("counter {name}: {got} want {want}"));
        }
    };
    check(
        "records_dropped = records that went missing",
        t.records_dropped,
        vanished,
    );
    check(
        "records_dropped (model)",
        t.records_dropped,
        expected.records_dropped,
    );
    check("records (walked requests)", t.records, expected.records);
    check(
        "passthrough (all) = untouched requests",
        pt_total,
        n_untouched,
    );
    check("edit_failures", t.edit_failures, 0);
    check("requests", t.requests, (CONNS * PER_CONN) as u64);
    check("bytes_in", t.bytes_in, sent_bytes as u64);
    check("bytes_out", t.bytes_out, received_bytes as u64);
    check("in_flight", t.in_flight, 0);
    let rule = |name: &str| s.rule(name).cloned().unwrap_or_default();
    check(
        "drop-debug.dropped",
        rule("drop-debug").dropped,
        expected.rule("drop-debug").dropped,
    );
    check(
        "drop-debug.dropped_bytes",
        rule("drop-debug").dropped_bytes,
        expected.rule("drop-debug").dropped_bytes,
    );
    check(
        "count-all.matched",
        rule("count-all").matched,
        expected.rule("count-all").matched,
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) under send-buffer pressure (clients' SO_SNDBUF {sndbufs:?}, collector's \
         SO_RCVBUF {rcvbufs:?}; {n_filtered} arrivals filtered, {n_untouched} untouched):\n  \
         {}\ntotals {t:#?}",
        problems.len(),
        problems.join("\n  "),
    );
    println!(
        "buffer_pressure: {} requests of {}..{} bytes on {CONNS} connections (SO_SNDBUF {sndbufs:?}, \
         collector SO_RCVBUF {rcvbufs:?}, read 256-4096 bytes per ms): {n_filtered} filtered, \
         {n_untouched} untouched (passthrough {passthrough:?}), none corrupt; {vanished} records \
         dropped; {:?}",
        CONNS * PER_CONN,
        plans
            .iter()
            .flatten()
            .map(|(r, _)| r.http.len())
            .min()
            .unwrap(),
        plans
            .iter()
            .flatten()
            .map(|(r, _)| r.http.len())
            .max()
            .unwrap(),
        t_test.elapsed()
    );
}

// ------------------------------------------------------------------------------------------
// 3. A thousand connections while rule sets flip

/// One small request of connection `conn`: TRACE, DEBUG, INFO, WARN and ERROR records in a
/// connection-dependent order, bodies `c<conn>-q<q>-<i>`.
fn flip_logs(conn: usize, q: usize) -> ExportLogsServiceRequest {
    const SEVERITIES: [i32; 7] = [1, 5, 9, 13, 17, 6, 10];
    let mut b = LogsRequestBuilder::new()
        .resource(&format!("flip-{}", conn % 7))
        .scope("flip");
    let n = SEVERITIES.len() + (conn + q) % 4;
    for i in 0..n {
        let sev = SEVERITIES[(i + conn) % SEVERITIES.len()];
        b = b.record(Rec::new(sev, &format!("c{conn}-q{q}-{i}")));
    }
    b.build()
}

/// `c<conn>-q<q>` of a record body `c<conn>-q<q>-<i>`.
fn flip_id(body: &str) -> Option<(usize, usize)> {
    let mut it = body.split('-');
    let c = it.next()?.strip_prefix('c')?.parse().ok()?;
    let q = it.next()?.strip_prefix('q')?.parse().ok()?;
    Some((c, q))
}

#[test]
fn a_thousand_connections_while_rule_sets_flip() {
    if !kernel_or_skip("a_thousand_connections_while_rule_sets_flip") {
        return;
    }
    const CONNS: usize = 1000;
    const THREADS: usize = 4;
    const FLIP_EVERY: Duration = Duration::from_millis(20);
    let set_a = vec![RuleSpec::drop("flip-a-drop-debug").severity("DEBUG", 5..=8)];
    let set_b = vec![RuleSpec::drop("flip-b-drop-info-and-below").severity("<=INFO", 1..=12)];
    let rx = Receiver::start_v4();
    let rules = TempRules::with_files(&[("50-flip.toml", &rules_toml(&set_a))]);
    let staging = TempRules::new();
    std::fs::create_dir(staging.file("a")).unwrap();
    std::fs::create_dir(staging.file("b")).unwrap();
    let push_a = staging.write("a/50-flip.toml", &rules_toml(&set_a));
    let push_b = staging.write("b/50-flip.toml", &rules_toml(&set_b));
    let mut agent = AgentProcess::new("faults-flip", rules.path(), &[rx.port()], false);
    let s0 = agent.start();
    let t_test = Instant::now();

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let sent: Mutex<BTreeMap<(usize, usize), SentRequest>> = Mutex::default();
    let statuses: Mutex<Vec<String>> = Mutex::default();
    let (flips, push_failures, traffic_time) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    // The head, then the body in 2 writes, 2 ms apart: each request is held
                    // a few ms, so some straddle a flip.
                    let split = Split::HeadThenBody {
                        pieces: 2,
                        delay: Duration::from_millis(2),
                    };
                    loop {
                        let c = next.fetch_add(1, Ordering::SeqCst);
                        if c >= CONNS {
                            return;
                        }
                        let mut client = RawClient::connect(rx.addr());
                        for q in 0..1 + c % 2 {
                            let req = SentRequest::of(&flip_logs(c, q));
                            let resp = client.roundtrip(&req.http, &split);
                            if resp.status != 200 {
                                statuses
                                    .lock()
                                    .unwrap()
                                    .push(format!("connection {c} request {q}: {}", resp.status));
                            }
                            sent.lock().unwrap().insert((c, q), req);
                        }
                        client.finish();
                    }
                })
            })
            .collect();
        let flipper = scope.spawn(|| {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(FLIP_EVERY);
                let file = if ok.len() % 2 == 0 { &push_b } else { &push_a };
                let o = agent.push(&[file]);
                match pushed_generation(&o) {
                    Some(g) if o.status.success() => ok.push(g),
                    _ => failed.push(output_text(&o)),
                }
            }
            (ok, failed)
        });
        let t0 = Instant::now();
        let joined: Vec<_> = clients.into_iter().map(|t| t.join()).collect();
        let traffic_time = t0.elapsed();
        stop.store(true, Ordering::SeqCst);
        let (ok, failed) = flipper.join().expect("flipper");
        for j in joined {
            if let Err(e) = j {
                std::panic::resume_unwind(e);
            }
        }
        (ok, failed, traffic_time)
    });
    let sent = sent.into_inner().unwrap();
    let statuses = statuses.into_inner().unwrap();
    let total = sent.len();
    assert!(statuses.is_empty(), "non-200 answers: {statuses:?}");
    assert!(
        push_failures.is_empty(),
        "{} push(es) failed:\n{}",
        push_failures.len(),
        push_failures.join("\n")
    );
    assert!(
        flips.len() >= 3,
        "only {} flips happened during the traffic ({traffic_time:?}): the test shows nothing",
        flips.len()
    );
    // Each push made exactly one generation, in order.
    let want_gens: Vec<u64> = (1..=flips.len() as u64)
        .map(|i| s0.generation + i)
        .collect();
    assert_eq!(flips, want_gens, "generations the pushes reported");

    // Every arrival is exactly what A or B makes of what was sent, or untouched.
    let received = rx.wait_for(total, WAIT);
    rx.assert_no_more(total, Duration::from_millis(200));
    let (mut n_a, mut n_b, mut n_untouched) = (0u64, 0u64, 0u64);
    let (mut dropped_a, mut dropped_b) = (0u64, 0u64);
    let mut seen = std::collections::BTreeSet::new();
    let mut mixed = Vec::new();
    for r in &received {
        assert!(
            r.decode_error.is_none(),
            "undecodable: {:?}",
            r.decode_error
        );
        let records = r.records();
        let id = records
            .iter()
            .find_map(|x| flip_id(x.body.as_deref()?))
            .unwrap_or_else(|| panic!("no record names its request: {records:?}"));
        assert!(seen.insert(id), "request {id:?} arrived twice");
        let req = &sent[&id];
        let (ea, eb) = (evaluate(&set_a, &req.sent), evaluate(&set_b, &req.sent));
        assert!(
            ea.kept != eb.kept && ea.records_dropped > 0,
            "A and B differ on {id:?}"
        );
        if r.body == req.http.payload {
            n_untouched += 1;
        } else if records == ea.kept {
            n_a += 1;
            dropped_a += ea.records_dropped;
        } else if records == eb.kept {
            n_b += 1;
            dropped_b += eb.records_dropped;
        } else {
            let sevs =
                |v: &[ReceivedRecord]| v.iter().map(|x| x.severity_number).collect::<Vec<_>>();
            mixed.push(format!(
                "request {id:?}: sent severities {:?}, arrived {:?}",
                sevs(&req.records()),
                sevs(&records)
            ));
        }
    }
    assert!(
        mixed.is_empty(),
        "{} request(s) are neither A's verdict, nor B's, nor untouched:\n  {}",
        mixed.len(),
        mixed.join("\n  ")
    );

    let s = wait_stats(&agent, "in_flight 0", Duration::from_secs(10), |s| {
        s.totals.in_flight == 0
    });
    assert_agent_healthy(&mut agent, "after the flips");
    let (t, t0) = (&s.totals, &s0.totals);
    let mut problems = Vec::new();
    if t.connections - t0.connections < CONNS as u64 {
        problems.push(format!(
            "connections: {} counted, {CONNS} made",
            t.connections - t0.connections
        ));
    }
    let mut check = |name: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("{name}: {got} want {want}"));
        }
    };
    check(
        "generation",
        s.generation,
        s0.generation + flips.len() as u64,
    );
    check("requests", t.requests - t0.requests, total as u64);
    check(
        "records_dropped",
        t.records_dropped - t0.records_dropped,
        dropped_a + dropped_b,
    );
    check("edit_failures", t.edit_failures - t0.edit_failures, 0);
    check("released", t.released - t0.released, 0);
    let pt = delta(&t.passthrough, &t0.passthrough);
    check(
        "passthrough.generation",
        pt.get("generation").copied().unwrap_or(0),
        n_untouched,
    );
    check("passthrough (all)", pt.values().sum(), n_untouched);
    let dropped_by = |name: &str| s.rule(name).map(|r| r.dropped).unwrap_or(0);
    check(
        "flip-a-drop-debug.dropped",
        dropped_by("flip-a-drop-debug"),
        dropped_a,
    );
    check(
        "flip-b-drop-info-and-below.dropped",
        dropped_by("flip-b-drop-info-and-below"),
        dropped_b,
    );
    assert!(
        problems.is_empty(),
        "counters disagree with the receiver:\n  {}\ntotals {t:#?}",
        problems.join("\n  ")
    );
    println!(
        "thousand_connections: {CONNS} connections ({} counted), {total} requests from \
         {THREADS} threads in {traffic_time:?} while {} pushes flipped the rule set: A-verdict \
         {n_a}, B-verdict {n_b}, untouched (passthrough.generation) {n_untouched}, mixed 0; \
         {:?} in all",
        t.connections - t0.connections,
        flips.len(),
        t_test.elapsed()
    );
}
