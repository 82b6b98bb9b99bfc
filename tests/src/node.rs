//! The Node.js side of the harness: the official OpenTelemetry Node.js SDK
//! (`@opentelemetry/sdk-logs` + `@opentelemetry/exporter-logs-otlp-proto`, http/protobuf) as a
//! third real client ([`export_with_node`], `tests/node/export_logs.js`). Unlike the Rust and
//! Python exporters it sends every export with `Transfer-Encoding: chunked` (no Content-Length),
//! on a keep-alive connection.
//!
//! The packages are the ones `cargo xtask setup` installs with `npm ci` at
//! `<workspace>/target/node-client` (pinned: `tests/node/package-lock.json`); node is `DT_NODE`,
//! else `node` on PATH. Tests call [`node_or_skip`] first: without the client they print
//! `SKIPPED`, or fail when `DT_REQUIRE_KERNEL_TESTS=1`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use serde_json::{Value, json};

use crate::exporter::ExportPlan;
use crate::python::python_plan;
use crate::record::{ReceivedRecord, SentRecord, flatten_sent};

/// Env var naming the node binary to use instead of `node` on PATH.
pub const NODE_ENV: &str = "DT_NODE";

/// Where `cargo xtask setup` installs the packages, relative to the workspace root.
pub const NODE_CLIENT: &str = "target/node-client";

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `tests/node/<name>`.
pub fn node_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("node")
        .join(name)
}

/// `<workspace>/target/node-client/node_modules`, what the scripts get as `NODE_PATH`.
pub fn node_modules() -> PathBuf {
    workspace_root().join(NODE_CLIENT).join("node_modules")
}

/// The node binary, with the setup's packages in place; `Err` says why there is none.
pub fn node_path() -> Result<PathBuf, String> {
    let node = if let Some(p) = std::env::var_os(NODE_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(format!("{NODE_ENV}={} does not exist", p.display()));
        }
        p
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("node"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!("node is not on PATH: run `cargo xtask setup`, or set {NODE_ENV}")
            })?
    };
    let exporter = node_modules().join("@opentelemetry/exporter-logs-otlp-proto/package.json");
    if !exporter.exists() {
        return Err(format!(
            "the tests' Node.js client is missing ({} not found): run `cargo xtask setup`",
            exporter.display()
        ));
    }
    Ok(node)
}

/// The node binary, or `None` after printing `SKIPPED <test>: <reason>` (a panic instead when
/// `DT_REQUIRE_KERNEL_TESTS=1`).
pub fn node_or_skip(test: &str) -> Option<PathBuf> {
    crate::kernel::needed_or_skip(test, node_path())
}

/// The node binary; panics when there is none.
pub fn node() -> PathBuf {
    node_path().unwrap_or_else(|e| panic!("{e}"))
}

/// A command running `tests/node/<script>` with the setup's packages and a clean OpenTelemetry
/// environment, never through a proxy.
pub fn node_command(script: &str) -> Command {
    let mut c = Command::new(node());
    c.arg(node_script(script));
    for (k, _) in std::env::vars_os() {
        let s = k.to_string_lossy();
        if s.starts_with("OTEL_") || s.starts_with("NODE_") || s.starts_with("npm_") {
            c.env_remove(k);
        }
    }
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
    c.env("NODE_PATH", node_modules());
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

/// What `export_logs.js` did.
#[derive(Clone, Debug, Default)]
pub struct NodeExportReport {
    pub batches_ok: usize,
    pub batches_failed: usize,
    pub errors: Vec<String>,
    pub flush_errors: Vec<String>,
    /// The request bodies of the exports that succeeded, in export order, as the exporter's own
    /// serializer made them (before any edit on the wire).
    pub bodies: Vec<Vec<u8>>,
    /// Their records, in order, with field lengths.
    pub sent: Vec<SentRecord>,
    pub failed_records: usize,
    /// Requests the exporter's transport made through `http.request` (more than `batches_ok`
    /// would mean retries).
    pub http_requests: usize,
    /// From the start of the first export to the end of the last, as the script measured.
    pub elapsed: Duration,
    /// The script exited 0 (every export and flush succeeded, every record went out).
    pub exit_ok: bool,
    pub stderr: String,
    /// Node.js and package versions.
    pub versions: Value,
    /// The exporting process's pid.
    pub pid: u32,
}

impl NodeExportReport {
    /// Panics unless every batch and flush succeeded, `expected_records` went out, and the
    /// exporter made exactly one HTTP request per batch (no retries).
    pub fn assert_all_ok(&self, expected_records: usize) {
        assert!(
            self.exit_ok
                && self.batches_failed == 0
                && self.errors.is_empty()
                && self.flush_errors.is_empty(),
            "Node.js exporter failures: exit ok {}, {} batches failed, errors {:?}, flush errors {:?}\nstderr:\n{}",
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
            "Node.js exporter: HTTP requests vs successful batches (a retry resent records)"
        );
    }

    pub fn sent_records(&self) -> Vec<ReceivedRecord> {
        self.sent.iter().map(|s| s.record.clone()).collect()
    }

    /// The successful exports' bodies, decoded.
    pub fn requests(&self) -> Vec<ExportLogsServiceRequest> {
        self.bodies
            .iter()
            .map(|b| ExportLogsServiceRequest::decode(b.as_slice()).expect("decode a sent body"))
            .collect()
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

fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c:#x}"),
        }
    }
    let s: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The plan as `export_logs.js` reads it: the Python script's format (records may also carry
/// `event_name` and integer or boolean attribute values, see the script's header).
pub fn node_plan(endpoint: &str, plan: &ExportPlan) -> Value {
    python_plan(endpoint, plan)
}

/// Exports `plan` with the OpenTelemetry Node.js SDK to `endpoint` (a full URL, e.g.
/// `http://127.0.0.1:4318/v1/logs`). `ExportMode::Direct` calls the exporter with batches of
/// `batch_size`; `ExportMode::BatchProcessor` goes through LoggerProvider and
/// BatchLogRecordProcessor. Panics when the script cannot run or its report is unreadable;
/// export failures are in the report (see [`NodeExportReport::assert_all_ok`]).
pub fn export_with_node(endpoint: &str, plan: &ExportPlan) -> NodeExportReport {
    export_with_node_value(&node_plan(endpoint, plan))
}

/// Like [`export_with_node`] with SimpleLogRecordProcessor: one request per record.
pub fn export_with_node_simple(endpoint: &str, plan: &ExportPlan) -> NodeExportReport {
    let mut v = node_plan(endpoint, plan);
    v["mode"] = json!("simple");
    export_with_node_value(&v)
}

/// Runs `export_logs.js` on a plan given as JSON (for records with `event_name` or typed
/// attributes, which [`ExportPlan`] does not carry).
pub fn export_with_node_value(plan: &Value) -> NodeExportReport {
    export_with_node_cmd(node_command("export_logs.js"), plan)
}

/// Like [`export_with_node`], from inside the network namespace `ns` (over its veth pair).
pub fn export_with_node_in_netns(
    endpoint: &str,
    plan: &ExportPlan,
    ns: &crate::netns::Netns,
) -> NodeExportReport {
    export_with_node_cmd(
        ns.wrap(&node_command("export_logs.js")),
        &node_plan(endpoint, plan),
    )
}

fn export_with_node_cmd(mut cmd: Command, plan: &Value) -> NodeExportReport {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", node().display()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let out_thread = drain(child.stdout.take().unwrap(), out.clone());
    let err_thread = drain(child.stderr.take().unwrap(), err.clone());
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(plan.to_string().as_bytes())
            .expect("writing the plan to export_logs.js");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for export_logs.js") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "export_logs.js did not finish in 300 s; stderr:\n{}",
                String::from_utf8_lossy(&err.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    let stdout = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("export_logs.js ({status}): unreadable report ({e}): {stdout:?}\nstderr:\n{stderr}")
    });
    let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
    let bodies: Vec<Vec<u8>> = v["sent_bodies"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| base64_decode(b.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let mut sent = Vec::new();
    for b in &bodies {
        let req = ExportLogsServiceRequest::decode(b.as_slice())
            .unwrap_or_else(|e| panic!("a body export_logs.js sent does not decode: {e}"));
        // dt counts the bytes the exporter wrote, not prost's re-encoding.
        let mut recs = flatten_sent(&req);
        let lens = crate::record::wire_record_field_lens(b)
            .expect("a body export_logs.js sent is a plain encoding");
        assert_eq!(lens.len(), recs.len(), "records in a sent body");
        for (r, len) in recs.iter_mut().zip(lens) {
            r.field_len = len;
        }
        sent.extend(recs);
    }
    let report = NodeExportReport {
        batches_ok: n("batches_ok"),
        batches_failed: n("batches_failed"),
        errors: strings(&v["errors"]),
        flush_errors: strings(&v["flush_errors"]),
        bodies,
        sent,
        failed_records: n("records_failed"),
        http_requests: n("http_requests"),
        elapsed: Duration::from_secs_f64(v["elapsed_secs"].as_f64().unwrap_or(0.0)),
        exit_ok: status.success(),
        stderr,
        versions: v["versions"].clone(),
        pid: n("pid") as u32,
    };
    assert_eq!(
        report.sent.len(),
        n("records_sent"),
        "export_logs.js: records in the sent bodies vs records_sent"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(base64_decode(""), b"");
        assert_eq!(base64_decode("Zg=="), b"f");
        assert_eq!(base64_decode("Zm8="), b"fo");
        assert_eq!(base64_decode("Zm9v"), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy"), b"foobar");
        assert_eq!(base64_decode("/+8A"), [0xff, 0xef, 0x00]);
    }
}
