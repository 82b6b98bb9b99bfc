//! The Python side of the harness: the official OpenTelemetry Python SDK exporter as a second real
//! client ([`export_with_python`], `tests/python/export_logs.py`), and a collector stand-in on
//! Python's http.server and the upb protobuf runtime as a second HTTP stack and decoder
//! ([`PyReceiver`], `tests/python/receiver.py`).
//!
//! The interpreter is the venv that `cargo xtask setup` builds at `<workspace>/target/python-venv`
//! (pinned packages: `tests/python/requirements.txt`), or `DT_PYTHON`. Tests call
//! [`python_or_skip`] first: without the venv they print `SKIPPED`, or fail when
//! `DT_REQUIRE_KERNEL_TESTS=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::exporter::{ExportMode, ExportPlan};
use crate::otlp::BASE_TIME_NANOS;
use crate::receiver::Receiver;
use crate::record::{ReceivedRecord, SentRecord};

/// Env var naming the Python interpreter to use instead of the setup's venv.
pub const PYTHON_ENV: &str = "DT_PYTHON";

/// Where `cargo xtask setup` puts the venv, relative to the workspace root.
pub const PYTHON_VENV: &str = "target/python-venv";

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `tests/python/<name>`.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// The interpreter: `DT_PYTHON`, else the setup's venv; `Err` says why there is none.
pub fn python_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(format!("{PYTHON_ENV}={} does not exist", p.display()))
        };
    }
    let p = workspace_root()
        .join(PYTHON_VENV)
        .join("bin")
        .join("python");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "the tests' Python venv is missing ({} not found): run `cargo xtask setup`, \
             or set {PYTHON_ENV}",
            p.display()
        ))
    }
}

/// The interpreter, or `None` after printing `SKIPPED <test>: <reason>` (a panic instead when
/// `DT_REQUIRE_KERNEL_TESTS=1`).
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    crate::kernel::needed_or_skip(test, python_path())
}

/// The interpreter; panics when there is none.
pub fn python() -> PathBuf {
    python_path().unwrap_or_else(|e| panic!("{e}"))
}

/// A command running `tests/python/<script>` with a clean OpenTelemetry environment.
fn python_command(script: &str) -> Command {
    let mut c = Command::new(python());
    c.arg(python_script(script));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OTEL_")
            || k == "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
            || k == "PYTHONPATH"
        {
            c.env_remove(k);
        }
    }
    // Straight to the receivers, never through a proxy from the environment (requests honours
    // HTTP_PROXY and friends).
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(k);
    }
    c.env("NO_PROXY", "*").env("no_proxy", "*");
    // requests lets these override the CA an exporter is given (`certificate_file` sets the
    // session's `verify`, which the environment's bundle replaces).
    c.env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE");
    c.env("PYTHONDONTWRITEBYTECODE", "1");
    c.env("PYTHONUNBUFFERED", "1");
    c
}

/// Collects a child's pipe on a thread, until it closes.
fn drain<R: Read + Send + 'static>(
    mut r: R,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The Python exporter.

/// What `export_logs.py` did.
#[derive(Clone, Debug, Default)]
pub struct PyExportReport {
    pub batches_ok: usize,
    pub batches_failed: usize,
    pub errors: Vec<String>,
    pub flush_errors: Vec<String>,
    /// Records in batches whose export returned SUCCESS, as the exporter encoded them.
    pub sent: Vec<SentRecord>,
    pub failed_records: usize,
    /// POSTs the exporter's HTTP session made (more than `batches_ok` would mean retries).
    pub http_requests: usize,
    /// From the start of the first export to the end of the last, as the script measured.
    pub elapsed: Duration,
    /// The script exited 0 (every export and flush succeeded, every record went out).
    pub exit_ok: bool,
    pub stderr: String,
    /// Interpreter, SDK and protobuf versions and backend.
    pub versions: Value,
}

impl PyExportReport {
    /// Panics unless every batch and flush succeeded, `expected_records` went out, and the
    /// exporter made exactly one HTTP request per batch (no retries).
    pub fn assert_all_ok(&self, expected_records: usize) {
        assert!(
            self.exit_ok
                && self.batches_failed == 0
                && self.errors.is_empty()
                && self.flush_errors.is_empty(),
            "Python exporter failures: exit ok {}, {} batches failed, errors {:?}, flush errors {:?}\nstderr:\n{}",
            self.exit_ok,
            self.batches_failed,
            self.errors,
            self.flush_errors,
            self.stderr
        );
        assert_eq!(self.sent.len(), expected_records, "records exported");
        assert!(self.batches_ok > 0);
        assert_eq!(
            self.http_requests, self.batches_ok,
            "Python exporter: HTTP requests vs successful batches (a retry resent records)"
        );
        assert_eq!(
            self.versions["protobuf_backend"], "upb",
            "the Python exporter must encode with upb"
        );
    }

    pub fn sent_records(&self) -> Vec<ReceivedRecord> {
        self.sent.iter().map(|s| s.record.clone()).collect()
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn record_of(v: &Value) -> ReceivedRecord {
    ReceivedRecord {
        service: str_of(&v["service"]),
        scope: str_of(&v["scope"]),
        severity_number: v["severity_number"].as_i64().unwrap_or(-1) as i32,
        body: v["body"].as_str().map(str::to_owned),
        attributes: v["attributes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| (str_of(&kv[0]), str_of(&kv[1])))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| s.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A planned attribute value as the scripts take it: `int:N` and `bool:B` (how the plans and the
/// decoders write typed values) become a JSON integer or boolean, which the SDKs encode as
/// `int_value` and `bool_value`; anything else stays a string.
fn typed(v: &str) -> Value {
    if let Some(n) = v.strip_prefix("int:").and_then(|n| n.parse::<i64>().ok()) {
        json!(n)
    } else if let Some(b) = v.strip_prefix("bool:").and_then(|b| b.parse::<bool>().ok()) {
        json!(b)
    } else {
        json!(v)
    }
}

/// The plan as `export_logs.py` reads it.
pub fn python_plan(endpoint: &str, plan: &ExportPlan) -> Value {
    let mode = match plan.mode {
        ExportMode::Direct => "direct",
        ExportMode::BatchProcessor => "batch",
    };
    let services: Vec<Value> = plan
        .services
        .iter()
        .map(|(svc, recs)| {
            json!({
                "service": svc,
                "records": recs.iter().map(|r| {
                    let mut rec = json!({
                        "scope": r.scope,
                        "severity_number": r.severity_number,
                        "body": r.body,
                        "attributes": r.attributes.iter().map(|(k, v)| json!([k, typed(v)])).collect::<Vec<_>>(),
                    });
                    if let Some(e) = &r.event_name {
                        rec["event_name"] = json!(e);
                    }
                    rec
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "endpoint": endpoint,
        "mode": mode,
        "batch_size": plan.batch_size,
        "base_time_nanos": BASE_TIME_NANOS,
        "timeout_secs": 20,
        "services": services,
    })
}

/// Gives the records of the plan's first service these bodies, in order (a string, an object,
/// an array, a number: each SDK encodes them as its AnyValue), for either script's plan.
pub fn set_bodies(plan: &mut Value, bodies: &[Value]) {
    let records = plan["services"][0]["records"]
        .as_array_mut()
        .expect("a plan with a service");
    for (rec, body) in records.iter_mut().zip(bodies) {
        rec["body"] = body.clone();
    }
}

/// Exports `plan` with the OpenTelemetry Python SDK to `endpoint` (a full URL, e.g.
/// `http://127.0.0.1:4318/v1/logs`). `ExportMode::Direct` calls the exporter with batches of
/// `batch_size`; `ExportMode::BatchProcessor` goes through LoggerProvider and
/// BatchLogRecordProcessor. Panics when the script cannot run or its report is unreadable;
/// export failures are in the report (see [`PyExportReport::assert_all_ok`]).
pub fn export_with_python(endpoint: &str, plan: &ExportPlan) -> PyExportReport {
    export_python_value(&python_plan(endpoint, plan))
}

/// How the Python SDK's exporter sends: its OTLP/HTTP exporter (`http/protobuf`) or its OTLP/gRPC
/// one (`grpc`, grpcio over HTTP/2; `endpoint` is then `http(s)://HOST:PORT`), with or without
/// gzip, trusting the CA `ca` for an `https://` endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PyTransport {
    pub grpc: bool,
    pub gzip: bool,
    pub ca: Option<PathBuf>,
}

/// Like [`export_with_python`], sending as `transport` says.
pub fn export_with_python_as(
    endpoint: &str,
    plan: &ExportPlan,
    transport: &PyTransport,
) -> PyExportReport {
    let mut v = python_plan(endpoint, plan);
    v["protocol"] = json!(if transport.grpc {
        "grpc"
    } else {
        "http/protobuf"
    });
    v["compression"] = json!(if transport.gzip { "gzip" } else { "none" });
    if let Some(ca) = &transport.ca {
        v["ca_file"] = json!(ca.to_string_lossy());
    }
    export_python_value(&v)
}

/// Like [`export_with_python`] with SimpleLogRecordProcessor: one request per record.
pub fn export_with_python_simple(endpoint: &str, plan: &ExportPlan) -> PyExportReport {
    let mut v = python_plan(endpoint, plan);
    v["mode"] = json!("simple");
    export_python_value(&v)
}

/// Like [`export_with_python`], from a process that joins the cgroup v2 directory `cgroup`
/// (its `cgroup.procs`) before it starts Python: a sender in, say, a container's scope.
pub fn export_with_python_in_cgroup(
    endpoint: &str,
    plan: &ExportPlan,
    cgroup: &std::path::Path,
) -> PyExportReport {
    let py = python_command("export_logs.py");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("echo 0 > \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(cgroup.join("cgroup.procs"))
        .arg(py.get_program())
        .args(py.get_args());
    for (k, v) in py.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    export_python_with(c, &python_plan(endpoint, plan))
}

/// Like [`export_with_python`], from inside the network namespace `ns` (over its veth pair).
pub fn export_with_python_in_netns(
    endpoint: &str,
    plan: &ExportPlan,
    ns: &crate::netns::Netns,
) -> PyExportReport {
    export_python_with(
        ns.wrap(&python_command("export_logs.py")),
        &python_plan(endpoint, plan),
    )
}

pub fn export_python_value(plan: &Value) -> PyExportReport {
    export_python_with(python_command("export_logs.py"), plan)
}

fn export_python_with(mut cmd: Command, plan: &Value) -> PyExportReport {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python().display()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let out_thread = drain(child.stdout.take().unwrap(), out.clone());
    let err_thread = drain(child.stderr.take().unwrap(), err.clone());
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(plan.to_string().as_bytes())
            .expect("writing the plan to export_logs.py");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for export_logs.py") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "export_logs.py did not finish in 300 s; stderr:\n{}",
                String::from_utf8_lossy(&err.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The pipes close with the process.
    let _ = out_thread.join();
    let _ = err_thread.join();
    let stdout = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("export_logs.py ({status}): unreadable report ({e}): {stdout:?}\nstderr:\n{stderr}")
    });
    let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
    PyExportReport {
        batches_ok: n("batches_ok"),
        batches_failed: n("batches_failed"),
        errors: strings(&v["errors"]),
        flush_errors: strings(&v["flush_errors"]),
        sent: v["sent"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| SentRecord {
                        record: record_of(r),
                        field_len: r["field_len"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        failed_records: n("records_failed"),
        http_requests: n("http_requests"),
        elapsed: Duration::from_secs_f64(v["elapsed_secs"].as_f64().unwrap_or(0.0)),
        exit_ok: status.success(),
        stderr,
        versions: v["versions"].clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The Python receiver.

/// One request as the Python receiver got it.
#[derive(Clone, Debug)]
pub struct PyReceived {
    pub conn: u64,
    pub seq_on_conn: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The Content-Length header's value.
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// The body's length after transfer decoding, and its CRC-32 (zlib's).
    pub body_len: u64,
    pub body_crc32: u32,
    /// The whole body arrived.
    pub complete: bool,
    /// Bytes read on the connection so far, through this request.
    pub conn_bytes: u64,
    /// `Some(true)` when a protobuf `/v1/logs` body decoded, `Some(false)` when it did not.
    pub decode_ok: Option<bool>,
    pub decode_error: Option<String>,
    /// Unknown fields upb met in the decoded messages.
    pub unknown_fields: u64,
    pub records: Vec<ReceivedRecord>,
    /// Set when http.server rejected the request itself.
    pub http_error: Option<String>,
    pub status: u16,
}

impl PyReceived {
    fn from_json(v: &Value) -> PyReceived {
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        PyReceived {
            conn: u("conn"),
            seq_on_conn: u("seq_on_conn"),
            method: str_of(&v["method"]),
            path: str_of(&v["path"]),
            headers: v["headers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|kv| (str_of(&kv[0]), str_of(&kv[1])))
                        .collect()
                })
                .unwrap_or_default(),
            content_length: v["content_length"].as_u64(),
            chunked: v["chunked"].as_bool().unwrap_or(false),
            body_len: u("body_len"),
            body_crc32: u("body_crc32") as u32,
            complete: v["complete"].as_bool().unwrap_or(false),
            conn_bytes: u("conn_bytes"),
            decode_ok: v["decode_ok"].as_bool(),
            decode_error: v["decode_error"].as_str().map(str::to_owned),
            unknown_fields: u("unknown_fields"),
            records: v["records"]
                .as_array()
                .map(|a| a.iter().map(record_of).collect())
                .unwrap_or_default(),
            http_error: v["http_error"].as_str().map(str::to_owned),
            status: u("status") as u16,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `tests/python/receiver.py` as a child process, serving until dropped (SIGTERM).
pub struct PyReceiver {
    child: Option<Child>,
    addr: SocketAddr,
    /// Serving OTLP/gRPC, not OTLP/HTTP.
    grpc: bool,
    /// Over TLS.
    tls: bool,
    _dir: tempfile::TempDir,
    results: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl PyReceiver {
    /// Starts the receiver on `addr` (port 0: a free port, which it reports) and waits until it
    /// listens.
    pub fn start(addr: SocketAddr) -> PyReceiver {
        PyReceiver::start_with(addr, false, None)
    }

    /// An OTLP/gRPC receiver (grpcio) on a fresh `127.0.0.1` port: the LogsService's `Export`,
    /// each call recorded like a request (see `tests/python/receiver.py`, `--grpc`).
    pub fn start_grpc_v4() -> PyReceiver {
        PyReceiver::start_with("127.0.0.1:0".parse().unwrap(), true, None)
    }

    /// An OTLP/HTTP (or with `grpc`, OTLP/gRPC) receiver over TLS on a fresh `127.0.0.1` port,
    /// with `ca`'s server certificate.
    pub fn start_tls_v4(grpc: bool, ca: &crate::tls::TestCa) -> PyReceiver {
        PyReceiver::start_with(
            "127.0.0.1:0".parse().unwrap(),
            grpc,
            Some((ca.cert.as_path(), ca.key.as_path())),
        )
    }

    fn start_with(addr: SocketAddr, grpc: bool, tls: Option<(&Path, &Path)>) -> PyReceiver {
        let dir = tempfile::Builder::new()
            .prefix("dt-py-receiver-")
            .tempdir()
            .expect("temp dir");
        let results = dir.path().join("results.jsonl");
        std::fs::write(&results, b"").expect("create results file");
        let mut cmd = python_command("receiver.py");
        if grpc {
            cmd.arg("--grpc");
        }
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let mut child = cmd
            .arg("--host")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("--results")
            .arg(&results)
            // Its stdin stays open while we live: EOF tells it to exit.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python().display()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let _ = drain(child.stderr.take().unwrap(), stderr.clone());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let r = reader.read_line(&mut line);
            let _ = tx.send(r.map(|_| line));
            // Keep reading (nothing more is expected) so the pipe stays open.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(l)) if !l.trim().is_empty() => l,
            other => {
                let _ = child.kill();
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "receiver.py did not start ({other:?}, {status:?}); stderr:\n{}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                );
            }
        };
        let v: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("receiver.py: bad ready line {line:?}: {e}"));
        let port = v["port"].as_u64().expect("ready line port") as u16;
        assert_eq!(v["protobuf"], "upb", "receiver.py must decode with upb");
        PyReceiver {
            child: Some(child),
            addr: SocketAddr::new(addr.ip(), port),
            grpc,
            tls: tls.is_some(),
            _dir: dir,
            results,
            stderr,
        }
    }

    /// A receiver on a fresh `127.0.0.1` port.
    pub fn start_v4() -> PyReceiver {
        PyReceiver::start("127.0.0.1:0".parse().unwrap())
    }

    /// A receiver on a fresh `[::1]` port.
    pub fn start_v6() -> PyReceiver {
        PyReceiver::start("[::1]:0".parse().unwrap())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://<addr>/v1/logs`; for a gRPC receiver `http://<addr>`, the gRPC exporter's endpoint;
    /// `https://` over TLS.
    pub fn logs_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.grpc {
            format!("{scheme}://{}", self.addr)
        } else {
            format!("{scheme}://{}/v1/logs", self.addr)
        }
    }

    /// What the receiver wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Every request so far, in the order handled.
    pub fn results(&self) -> Vec<PyReceived> {
        let text = std::fs::read_to_string(&self.results).unwrap_or_default();
        // Only whole lines: the last one may still be being written.
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        whole
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("receiver.py result line {l:?}: {e}"));
                PyReceived::from_json(&v)
            })
            .collect()
    }

    /// Waits until at least `n` requests have been handled; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<PyReceived> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.results();
            if r.len() >= n {
                return r;
            }
            if Instant::now() >= deadline {
                panic!(
                    "Python receiver on {}: waited {timeout:?} for {n} requests, got {}: {:?}\nstderr:\n{}",
                    self.addr,
                    r.len(),
                    r.iter()
                        .map(|r| (&r.method, &r.path, r.body_len, r.status))
                        .collect::<Vec<_>>(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits `quiet` and asserts no more than `n` requests came.
    pub fn assert_no_more(&self, n: usize, quiet: Duration) {
        std::thread::sleep(quiet);
        let got = self.results().len();
        assert_eq!(
            got, n,
            "Python receiver on {}: more requests than expected",
            self.addr
        );
    }

    /// Every decoded record, in the order handled.
    pub fn records(&self) -> Vec<ReceivedRecord> {
        self.results().into_iter().flat_map(|r| r.records).collect()
    }

    /// `(request index, error)` for every request that did not arrive whole and decode (protobuf
    /// `/v1/logs`), or that http.server rejected, or that carried unknown fields.
    pub fn decode_failures(&self) -> Vec<(usize, String)> {
        self.results()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                if let Some(e) = &r.http_error {
                    Some((i, format!("http.server: {e}")))
                } else if r.decode_ok == Some(false) {
                    Some((i, r.decode_error.clone().unwrap_or_default()))
                } else if !r.complete {
                    Some((i, format!("incomplete body ({} bytes)", r.body_len)))
                } else if r.unknown_fields != 0 {
                    Some((i, format!("{} unknown fields", r.unknown_fields)))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Total bytes read over all connections.
    pub fn total_bytes(&self) -> u64 {
        let mut per_conn: std::collections::BTreeMap<u64, u64> = Default::default();
        for r in self.results() {
            let e = per_conn.entry(r.conn).or_default();
            *e = (*e).max(r.conn_bytes);
        }
        per_conn.values().sum()
    }

    /// Stops the receiver with SIGTERM and asserts it exits 0.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "receiver.py did not exit cleanly on SIGTERM ({status:?}); stderr:\n{}",
            self.stderr()
        );
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for PyReceiver {
    fn drop(&mut self) {
        let _ = self.terminate();
        if std::thread::panicking() {
            let err = self.stderr();
            if !err.trim().is_empty() {
                let _ = std::io::stderr()
                    .lock()
                    .write_all(format!("receiver.py stderr:\n{err}\n").as_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Either receiver.

/// What a test needs from a collector stand-in, whichever HTTP stack and decoder it runs.
pub trait Collector {
    /// `"hyper+prost"` or `"http.server+upb"`.
    fn kind(&self) -> &'static str;
    fn port(&self) -> u16;
    fn url(&self) -> String;
    /// Waits for `n` requests (panics after `timeout`).
    fn wait_requests(&self, n: usize, timeout: Duration);
    /// Asserts exactly `n` requests arrived, after `quiet`.
    fn no_more(&self, n: usize, quiet: Duration);
    /// Decoded records, in arrival order.
    fn decoded(&self) -> Vec<ReceivedRecord>;
    /// Decoded records per request, in arrival order.
    fn decoded_per_request(&self) -> Vec<Vec<ReceivedRecord>>;
    /// Requests that did not decode.
    fn failures(&self) -> Vec<(usize, String)>;
    /// Every request was answered 200.
    fn all_ok(&self) -> bool;
    /// Bytes read over all connections.
    fn wire_bytes(&self) -> u64;
}

impl Collector for Receiver {
    fn kind(&self) -> &'static str {
        "hyper+prost"
    }
    fn port(&self) -> u16 {
        Receiver::port(self)
    }
    fn url(&self) -> String {
        self.logs_url()
    }
    fn wait_requests(&self, n: usize, timeout: Duration) {
        self.wait_for(n, timeout);
    }
    fn no_more(&self, n: usize, quiet: Duration) {
        self.assert_no_more(n, quiet);
    }
    fn decoded(&self) -> Vec<ReceivedRecord> {
        self.records()
    }
    fn decoded_per_request(&self) -> Vec<Vec<ReceivedRecord>> {
        self.requests().iter().map(|r| r.records()).collect()
    }
    fn failures(&self) -> Vec<(usize, String)> {
        self.decode_failures()
    }
    fn all_ok(&self) -> bool {
        self.requests()
            .iter()
            .all(|r| r.status == 200 && r.logs.is_some())
    }
    fn wire_bytes(&self) -> u64 {
        self.total_bytes()
    }
}

impl Collector for PyReceiver {
    fn kind(&self) -> &'static str {
        if self.grpc {
            "grpcio+upb"
        } else {
            "http.server+upb"
        }
    }
    fn port(&self) -> u16 {
        PyReceiver::port(self)
    }
    fn url(&self) -> String {
        self.logs_url()
    }
    fn wait_requests(&self, n: usize, timeout: Duration) {
        self.wait_for(n, timeout);
    }
    fn no_more(&self, n: usize, quiet: Duration) {
        self.assert_no_more(n, quiet);
    }
    fn decoded(&self) -> Vec<ReceivedRecord> {
        self.records()
    }
    fn decoded_per_request(&self) -> Vec<Vec<ReceivedRecord>> {
        self.results().into_iter().map(|r| r.records).collect()
    }
    fn failures(&self) -> Vec<(usize, String)> {
        self.decode_failures()
    }
    fn all_ok(&self) -> bool {
        self.results()
            .iter()
            .all(|r| r.status == 200 && r.decode_ok == Some(true))
    }
    fn wire_bytes(&self) -> u64 {
        self.total_bytes()
    }
}
