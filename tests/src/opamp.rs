//! An OpAMP server for dt-agent's OpAMP client: `tests/python/opamp_server.py`, written from the
//! OpAMP specification (plain HTTP transport) on Python's http.server and the OpAMP message
//! classes of opentelemetry-opamp-client, independently of dt-agent's client code.
//!
//! [`OpampServer::start`] runs it as a child process (the venv of [`crate::python`]; tests call
//! [`crate::python_or_skip`] first) and drives it with one JSON command per line on its stdin:
//! what remote config to offer ([`OpampServer::set_config`]), one-shot `ReportFullState`,
//! injected `503` answers ([`OpampServer::fail`]), and every AgentToServer it received
//! ([`OpampServer::messages`]) or what it believes about each agent after status compression
//! ([`OpampServer::state`]).
//!
//! The server answers each AgentToServer with a ServerToAgent that echoes instance_uid, offers
//! capabilities AcceptsStatus | OffersRemoteConfig | AcceptsEffectiveConfig, carries the remote
//! config while one is set, the agent set AcceptsRemoteConfig, and the hash it last reported
//! differs, and sets `ReportFullState` when asked to, when sequence_num is not the previous one
//! plus 1, or when a new agent's first message has no agent_description.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::python::{python, python_script};

/// ServerToAgentFlags.ReportFullState.
pub const REPORT_FULL_STATE: u64 = 0x1;
/// The ServerToAgent.capabilities the server sends: AcceptsStatus | OffersRemoteConfig |
/// AcceptsEffectiveConfig.
pub const SERVER_CAPABILITIES: u64 = 0x7;
/// AgentCapabilities bits.
pub const REPORTS_STATUS: u64 = 0x1;
pub const ACCEPTS_REMOTE_CONFIG: u64 = 0x2;
pub const REPORTS_EFFECTIVE_CONFIG: u64 = 0x4;
pub const REPORTS_HEALTH: u64 = 0x800;
pub const REPORTS_REMOTE_CONFIG: u64 = 0x1000;

/// How long a command to the server may take before the harness gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// AgentDescription; attribute values as JSON (string, int, bool, double; arrays and kvlists as
/// JSON arrays and objects, bytes as hex).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Description {
    pub identifying: BTreeMap<String, Value>,
    pub non_identifying: BTreeMap<String, Value>,
}

impl Description {
    /// A string-valued identifying attribute.
    pub fn identifying_str(&self, key: &str) -> Option<&str> {
        self.identifying.get(key).and_then(Value::as_str)
    }

    /// A string-valued non-identifying attribute.
    pub fn non_identifying_str(&self, key: &str) -> Option<&str> {
        self.non_identifying.get(key).and_then(Value::as_str)
    }
}

/// ComponentHealth (the top level; component_health_map is not summarised).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    pub healthy: bool,
    pub status: String,
    pub last_error: String,
    pub start_time_unix_nano: u64,
    pub status_time_unix_nano: u64,
}

/// RemoteConfigStatus.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemoteConfigStatus {
    /// last_remote_config_hash, hex.
    pub hash: String,
    /// `UNSET`, `APPLIED`, `APPLYING` or `FAILED` (a number for an undefined value).
    pub status: String,
    pub error_message: String,
}

/// What the server answered to one AgentToServer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerResponse {
    pub flags: u64,
    /// The config_hash of the remote config it carried, hex.
    pub remote_config_hash: Option<String>,
}

/// One AgentToServer the server accepted (HTTP 200), in arrival order. A sub-message that was
/// absent from the message is `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentMessage {
    /// Arrival, Unix time in seconds.
    pub t: f64,
    /// instance_uid, hex (32 digits).
    pub instance_uid: String,
    pub sequence_num: u64,
    pub capabilities: u64,
    pub flags: u64,
    pub description: Option<Description>,
    pub health: Option<Health>,
    /// EffectiveConfig: file name → body (UTF-8, lossy).
    pub effective_config: Option<BTreeMap<String, String>>,
    pub remote_config_status: Option<RemoteConfigStatus>,
    /// agent_disconnect was set.
    pub disconnect: bool,
    /// The request's `OpAMP-Instance-UID`, `Content-Type` and `Content-Encoding` headers.
    pub uid_header: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub response: ServerResponse,
}

impl AgentMessage {
    /// instance_uid in the canonical UUID form (`8-4-4-4-12`), as the `OpAMP-Instance-UID`
    /// header should carry it.
    pub fn uuid(&self) -> String {
        let h = &self.instance_uid;
        if h.len() != 32 {
            return h.clone();
        }
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Only instance_uid (and sequence_num, capabilities) set: a poll.
    pub fn is_poll(&self) -> bool {
        self.description.is_none()
            && self.health.is_none()
            && self.effective_config.is_none()
            && self.remote_config_status.is_none()
            && !self.disconnect
    }

    /// One line for failure messages.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "uid {} seq {} caps {:#x}",
            self.instance_uid.get(..8).unwrap_or(&self.instance_uid),
            self.sequence_num,
            self.capabilities
        )];
        if let Some(d) = &self.description {
            parts.push(format!("description {:?}", d.identifying));
        }
        if let Some(h) = &self.health {
            parts.push(format!(
                "health healthy={} {:?} {:?}",
                h.healthy, h.status, h.last_error
            ));
        }
        if let Some(e) = &self.effective_config {
            parts.push(format!(
                "effective_config {:?}",
                e.keys().collect::<Vec<_>>()
            ));
        }
        if let Some(r) = &self.remote_config_status {
            parts.push(format!(
                "remote_config_status {} {} {:?}",
                r.status,
                r.hash.get(..12).unwrap_or(&r.hash),
                r.error_message
            ));
        }
        if self.disconnect {
            parts.push("disconnect".into());
        }
        parts.push(format!(
            "→ flags {:#x}{}",
            self.response.flags,
            if self.response.remote_config_hash.is_some() {
                " + remote_config"
            } else {
                ""
            }
        ));
        parts.join(", ")
    }

    fn from_json(v: &Value) -> AgentMessage {
        AgentMessage {
            t: v["t"].as_f64().unwrap_or_default(),
            instance_uid: str_of(&v["instance_uid"]),
            sequence_num: v["sequence_num"].as_u64().unwrap_or_default(),
            capabilities: v["capabilities"].as_u64().unwrap_or_default(),
            flags: v["flags"].as_u64().unwrap_or_default(),
            description: non_null(&v["description"]).map(|d| Description {
                identifying: map_of(&d["identifying"], Value::clone),
                non_identifying: map_of(&d["non_identifying"], Value::clone),
            }),
            health: non_null(&v["health"]).map(|h| Health {
                healthy: h["healthy"].as_bool().unwrap_or_default(),
                status: str_of(&h["status"]),
                last_error: str_of(&h["last_error"]),
                start_time_unix_nano: h["start_time_unix_nano"].as_u64().unwrap_or_default(),
                status_time_unix_nano: h["status_time_unix_nano"].as_u64().unwrap_or_default(),
            }),
            effective_config: non_null(&v["effective_config"]).map(|e| map_of(e, str_of)),
            remote_config_status: non_null(&v["remote_config_status"]).map(|r| {
                RemoteConfigStatus {
                    hash: str_of(&r["hash"]),
                    status: str_of(&r["status"]),
                    error_message: str_of(&r["error_message"]),
                }
            }),
            disconnect: v["disconnect"].as_bool().unwrap_or_default(),
            uid_header: v["uid_header"].as_str().map(str::to_owned),
            content_type: v["content_type"].as_str().map(str::to_owned),
            content_encoding: v["content_encoding"].as_str().map(str::to_owned),
            response: ServerResponse {
                flags: v["response"]["flags"].as_u64().unwrap_or_default(),
                remote_config_hash: v["response"]["remote_config_hash"]
                    .as_str()
                    .map(str::to_owned),
            },
        }
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn non_null(v: &Value) -> Option<&Value> {
    (!v.is_null()).then_some(v)
}

fn map_of<T>(v: &Value, f: impl Fn(&Value) -> T) -> BTreeMap<String, T> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), f(v))).collect())
        .unwrap_or_default()
}

/// Everything a `messages` command returns.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub messages: Vec<AgentMessage>,
    /// Arrival times of the POSTs answered 503 by [`OpampServer::fail`].
    pub rejected: Vec<f64>,
    /// Requests refused before they became messages (413, 415, 400): `{t, status, error}`.
    pub bad_requests: Vec<Value>,
}

struct Io {
    stdin: ChildStdin,
    lines: Receiver<String>,
}

/// `tests/python/opamp_server.py` on a free `127.0.0.1` port, killed when dropped.
pub struct OpampServer {
    child: Mutex<Child>,
    io: Mutex<Io>,
    port: u16,
    tls: bool,
}

impl OpampServer {
    /// Starts the server and waits until it listens. Panics without the venv (call
    /// [`crate::python_or_skip`] first).
    pub fn start() -> OpampServer {
        Self::spawn(None, None)
    }

    /// [`OpampServer::start`] over TLS, with this PEM certificate chain and key:
    /// [`OpampServer::endpoint`] is then `https://`.
    pub fn start_tls(cert: &Path, key: &Path) -> OpampServer {
        Self::spawn(Some((cert, key)), None)
    }

    /// [`OpampServer::start_tls`] that also asks each client for a certificate signed by the CA
    /// `client_ca`, and refuses the handshake of one that has none.
    pub fn start_tls_client_auth(cert: &Path, key: &Path, client_ca: &Path) -> OpampServer {
        Self::spawn(Some((cert, key)), Some(client_ca))
    }

    fn spawn(tls: Option<(&Path, &Path)>, client_ca: Option<&Path>) -> OpampServer {
        let mut c = Command::new(python());
        c.arg(python_script("opamp_server.py"));
        if let Some((cert, key)) = tls {
            c.arg("--tls").arg(cert).arg(key);
        }
        if let Some(ca) = client_ca {
            c.arg(ca);
        }
        for k in ["PYTHONPATH", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] {
            c.env_remove(k);
        }
        let mut child = c
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting opamp_server.py with {}: {e}", python().display())
            });
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let port = match lines.recv_timeout(COMMAND_TIMEOUT) {
            Ok(l) => l
                .strip_prefix("port ")
                .and_then(|p| p.trim().parse::<u16>().ok()),
            Err(_) => None,
        };
        let Some(port) = port else {
            let _ = child.kill();
            let status = child.wait();
            panic!("opamp_server.py did not start ({status:?}); see its stderr above");
        };
        OpampServer {
            child: Mutex::new(child),
            io: Mutex::new(Io { stdin, lines }),
            port,
            tls: tls.is_some(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/v1/opamp` (`https://` over TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/v1/opamp", self.port)
    }

    /// Sends one command and returns its answer; panics on an `error` answer or a dead server.
    fn command(&self, cmd: Value) -> Value {
        let io = &mut *self.io.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(io.stdin, "{cmd}").and_then(|()| io.stdin.flush()) {
            panic!("opamp_server.py: sending {cmd}: {e} (did it exit?)");
        }
        let line = io.lines.recv_timeout(COMMAND_TIMEOUT).unwrap_or_else(|e| {
            panic!("opamp_server.py: no answer to {cmd}: {e} (see its stderr above)")
        });
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("opamp_server.py: bad answer {line:?} to {cmd}: {e}"));
        if let Some(err) = v.get("error") {
            panic!("opamp_server.py: {cmd} failed: {err}");
        }
        v
    }

    /// Offers these files (name, body) as the remote config from now on: an AgentConfigMap with
    /// content_type `application/toml` for `*.toml`, else `text/plain`. Returns config_hash
    /// (hex): SHA-256 over the entries sorted by name, each `name NUL body NUL`.
    pub fn set_config(&self, files: &[(&str, &str)]) -> String {
        let files: serde_json::Map<String, Value> = files
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let v = self.command(json!({"cmd": "set_config", "files": files}));
        str_of(&v["hash"])
    }

    /// Offers no remote config any more.
    pub fn clear_config(&self) {
        self.command(json!({"cmd": "clear_config"}));
    }

    /// The next response (to any agent) sets ReportFullState.
    pub fn report_full_state(&self) {
        self.command(json!({"cmd": "report_full_state"}));
    }

    /// The next `count` POSTs get `503` with an empty body (and `Retry-After: S` when given).
    pub fn fail(&self, count: u32, retry_after: Option<u32>) {
        let mut cmd = json!({"cmd": "fail", "count": count});
        if let Some(s) = retry_after {
            cmd["retry_after"] = json!(s);
        }
        self.command(cmd);
    }

    /// The next `count` POSTs get `status` with an empty body (and `Retry-After: S` when given).
    pub fn fail_with(&self, count: u32, retry_after: Option<u32>, status: u16) {
        let mut cmd = json!({"cmd": "fail", "count": count, "status": status});
        if let Some(s) = retry_after {
            cmd["retry_after"] = json!(s);
        }
        self.command(cmd);
    }

    /// The next `count` messages are answered with a `ServerErrorResponse` of type UNAVAILABLE
    /// (with `retry_info` when `retry_ns` is given), not processed; their times go to
    /// [`OpampServer::rejected`].
    pub fn unavailable(&self, count: u32, retry_ns: Option<u64>) {
        let mut cmd = json!({"cmd": "unavailable", "count": count});
        if let Some(ns) = retry_ns {
            cmd["retry_ns"] = json!(ns);
        }
        self.command(cmd);
    }

    /// Requests without header `name: value` are answered 401 (`None`: none required).
    pub fn require_header(&self, name: &str, value: Option<&str>) {
        self.command(json!({"cmd": "require_header", "name": name, "value": value}));
    }

    /// Requests over `bytes` are answered 413 from now on.
    pub fn max_body(&self, bytes: usize) {
        self.command(json!({"cmd": "max_body", "bytes": bytes}));
    }

    /// The ServerCapabilities bits the answers carry from now on.
    pub fn capabilities(&self, value: u64) {
        self.command(json!({"cmd": "capabilities", "value": value}));
    }

    /// Every message, rejected attempt and refused request so far.
    pub fn received(&self) -> Received {
        let v = self.command(json!({"cmd": "messages"}));
        let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        Received {
            messages: list("messages")
                .iter()
                .map(AgentMessage::from_json)
                .collect(),
            rejected: list("rejected").iter().filter_map(Value::as_f64).collect(),
            bad_requests: list("bad_requests"),
        }
    }

    /// Every AgentToServer accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<AgentMessage> {
        self.received().messages
    }

    /// Arrival times of the POSTs answered 503 by [`OpampServer::fail`].
    pub fn rejected(&self) -> Vec<f64> {
        self.received().rejected
    }

    /// Requests refused before they became messages (413, 415, 400): `{t, status, error}`.
    pub fn bad_requests(&self) -> Vec<Value> {
        self.received().bad_requests
    }

    /// What the server holds per agent after status compression: `{"agents": {uid_hex:
    /// {"description", "health", "effective_config", "remote_config_status", "last_seq",
    /// "capabilities"}}}`, each sub-message its latest reported value (or null).
    pub fn state(&self) -> Value {
        self.command(json!({"cmd": "state"}))
    }

    /// Polls [`OpampServer::messages`] every 100 ms until `pred` holds and returns them; panics
    /// after `timeout`, naming `what` and listing the messages received.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[AgentMessage]) -> bool,
    ) -> Vec<AgentMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received();
            if pred(&r.messages) {
                return r.messages;
            }
            if Instant::now() >= deadline {
                let list: Vec<String> = r
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| format!("  {i}: {}", m.summary()))
                    .collect();
                panic!(
                    "OpAMP server: waited {timeout:?} for {what}; {} messages:\n{}\n\
                     {} rejected (503), refused: {:?}",
                    r.messages.len(),
                    list.join("\n"),
                    r.rejected.len(),
                    r.bad_requests
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OpampServer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::python_or_skip;
    use std::io::Read;
    use std::net::TcpStream;

    const UID: [u8; 16] = *b"\x01\x8f\x00\x11\x22\x33\x74\x44\x85\x55\x66\x77\x88\x99\xaa\xbb";

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field_varint(n: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3, &mut out);
        varint(v, &mut out);
        out
    }

    fn field_bytes(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((n << 3) | 2, &mut out);
        varint(b.len() as u64, &mut out);
        out.extend_from_slice(b);
        out
    }

    /// AgentToServer{instance_uid, sequence_num, extra fields}.
    fn agent_to_server(seq: u64, extra: &[Vec<u8>]) -> Vec<u8> {
        let mut m = field_bytes(1, &UID);
        m.extend(field_varint(2, seq));
        for e in extra {
            m.extend_from_slice(e);
        }
        m
    }

    /// agent_description = 3 with identifying_attributes [service.name = "x"].
    fn description() -> Vec<u8> {
        let any = field_bytes(1, b"x");
        let kv = [field_bytes(1, b"service.name"), field_bytes(2, &any)].concat();
        field_bytes(3, &field_bytes(1, &kv))
    }

    fn hex_decode(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn post(port: u16, content_type: &str, body: &[u8]) -> Resp {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n\
             OpAMP-Instance-UID: 018f0011-2233-7444-8555-66778899aabb\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Resp {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn opamp_server_round_trip() {
        if python_or_skip("opamp_server_round_trip").is_none() {
            return;
        }
        let server = OpampServer::start();
        let port = server.port();
        assert_eq!(
            server.endpoint(),
            format!("http://127.0.0.1:{port}/v1/opamp")
        );
        let caps = field_varint(4, REPORTS_STATUS | ACCEPTS_REMOTE_CONFIG);

        // A first, full status report: answered with instance_uid and capabilities only.
        let r = post(
            port,
            "application/x-protobuf",
            &agent_to_server(0, &[description(), caps.clone()]),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let expected = [field_bytes(1, &UID), field_varint(7, SERVER_CAPABILITIES)].concat();
        assert_eq!(r.body, expected, "ServerToAgent bytes");
        let msgs = server.wait_for("the first message", Duration::from_secs(5), |m| {
            m.len() == 1
        });
        let m = &msgs[0];
        assert_eq!(m.instance_uid, "018f001122337444855566778899aabb");
        assert_eq!(m.uid_header.as_deref(), Some(m.uuid().as_str()));
        assert_eq!(m.sequence_num, 0);
        assert_eq!(m.capabilities, REPORTS_STATUS | ACCEPTS_REMOTE_CONFIG);
        assert_eq!(m.content_type.as_deref(), Some("application/x-protobuf"));
        let d = m.description.as_ref().expect("description");
        assert_eq!(d.identifying_str("service.name"), Some("x"));
        assert!(d.non_identifying.is_empty());
        assert!(m.health.is_none() && m.effective_config.is_none());
        assert!(m.remote_config_status.is_none() && !m.disconnect);
        assert_eq!(m.response, ServerResponse::default());

        // A remote config: the next poll carries it, with its hash.
        let body = "[[rules]]\nname = \"drop-debug\"\n";
        let hash = server.set_config(&[("dt.toml", body), ("README", "notes")]);
        assert_eq!(hash.len(), 64, "{hash}");
        let r = post(port, "application/x-protobuf", &agent_to_server(1, &[]));
        assert_eq!(r.status, 200);
        assert!(
            contains(&r.body, body.as_bytes()),
            "no config in {:?}",
            r.body
        );
        assert!(contains(&r.body, b"application/toml"));
        assert!(contains(&r.body, &hex_decode(&hash)));
        let msgs = server.messages();
        assert!(msgs[1].is_poll());
        assert_eq!(
            msgs[1].response.remote_config_hash.as_deref(),
            Some(hash.as_str())
        );

        // Applied: the offer stops; the state keeps the description the poll left out.
        let rcs = [field_bytes(1, &hex_decode(&hash)), field_varint(2, 1)].concat();
        let r = post(
            port,
            "application/x-protobuf",
            &agent_to_server(2, &[field_bytes(7, &rcs)]),
        );
        assert_eq!(r.status, 200);
        assert!(!contains(&r.body, body.as_bytes()));
        let state = server.state();
        let a = &state["agents"][&msgs[0].instance_uid];
        assert_eq!(a["remote_config_status"]["status"], "APPLIED");
        assert_eq!(a["remote_config_status"]["hash"], hash.as_str());
        assert_eq!(a["description"]["identifying"]["service.name"], "x");
        assert_eq!(a["last_seq"], 2);

        // A sequence gap asks for the full state.
        let r = post(port, "application/x-protobuf", &agent_to_server(4, &[]));
        assert_eq!(r.status, 200);
        assert_eq!(server.messages()[3].response.flags, REPORT_FULL_STATE);

        // Throttling: 503 with Retry-After, recorded as a rejected attempt, not a message.
        server.fail(1, Some(2));
        let r = post(port, "application/x-protobuf", &agent_to_server(5, &[]));
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert!(r.body.is_empty());
        assert_eq!(server.rejected().len(), 1);
        assert_eq!(server.messages().len(), 4);
        let r = post(port, "application/x-protobuf", &agent_to_server(5, &[]));
        assert_eq!(r.status, 200);
        assert_eq!(server.messages()[4].response.flags, 0);

        // Not plain HTTP transport: 415.
        let r = post(port, "application/json", &agent_to_server(6, &[]));
        assert_eq!(r.status, 415);
        assert_eq!(server.bad_requests().len(), 1);
        assert_eq!(server.messages().len(), 5);

        // A new config, withdrawn before the agent polls: not offered. The one-shot
        // ReportFullState goes out once.
        server.set_config(&[("dt.toml", "# other\n")]);
        server.clear_config();
        server.report_full_state();
        let r = post(port, "application/x-protobuf", &agent_to_server(6, &[]));
        assert_eq!(r.status, 200);
        let r2 = post(port, "application/x-protobuf", &agent_to_server(7, &[]));
        assert_eq!(r2.status, 200);
        let msgs = server.messages();
        assert_eq!(msgs[5].response.flags, REPORT_FULL_STATE);
        assert_eq!(msgs[6].response, ServerResponse::default());
        assert!(
            msgs.iter()
                .skip(2)
                .all(|m| m.response.remote_config_hash.is_none())
        );
    }
}
