//! A real OpenTelemetry collector as a client of dt: Rotel (`rotel-agent start`), receiving
//! OTLP/HTTP on ports of its own and forwarding logs with its OTLP/HTTP exporter, as a node's
//! collector forwards to a gateway through a hooked port.
//!
//! The binary is the one `cargo xtask setup` installs from PyPI into `target/collector-venv`
//! (`rotel==0.0.1a15`), or `DT_COLLECTOR`. Tests call [`collector_or_skip`] first: without it
//! they print `SKIPPED`, or fail when `DT_REQUIRE_KERNEL_TESTS=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::capture::{CaptureListener, CapturedRequest};
use crate::net::reserve_port;
use crate::record::{ReceivedRecord, flatten};

/// Overrides where the collector's binary is.
pub const COLLECTOR_ENV: &str = "DT_COLLECTOR";
/// The venv `cargo xtask setup` installs it into (`COLLECTOR_VENV` in xtask/src/setup.rs).
pub const COLLECTOR_VENV: &str = "target/collector-venv";

/// `rotel-agent`, or why there is none.
pub fn collector_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(COLLECTOR_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{COLLECTOR_ENV}={} does not exist", p.display()))
        };
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest.parent().unwrap_or(manifest).join(COLLECTOR_VENV);
    std::fs::read_dir(venv.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no collector (rotel-agent) under {}: run `cargo xtask setup`, or set {COLLECTOR_ENV}",
                venv.display()
            )
        })
}

/// The collector's binary, or `None` after printing `SKIPPED` (a panic when
/// `DT_REQUIRE_KERNEL_TESTS=1`).
pub fn collector_or_skip(test: &str) -> Option<PathBuf> {
    crate::kernel::needed_or_skip(test, collector_path())
}

/// A running `rotel-agent start` forwarding logs to an upstream; killed when dropped.
pub struct Rotel {
    child: Option<Child>,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Rotel {
    /// Starts the collector with its OTLP/HTTP receiver on a free port of 127.0.0.1 and its
    /// OTLP/HTTP exporter sending to `upstream` (`http://host:port`), with `extra` arguments;
    /// waits until the receiver accepts connections.
    pub fn start(bin: &Path, upstream: &str, extra: &[&str]) -> Rotel {
        // Its ports are found free, released, then bound by the collector: another test may
        // take one between; then it exits at once, and starts again on others.
        for attempt in 1.. {
            match Rotel::try_start(bin, upstream, extra) {
                Ok(c) => return c,
                Err(log) if attempt < 5 && log.contains("Address already in use") => continue,
                Err(log) => panic!("the collector did not start; its log:\n{log}"),
            }
        }
        unreachable!()
    }

    fn try_start(bin: &Path, upstream: &str, extra: &[&str]) -> Result<Rotel, String> {
        // Two free ports, released for the collector to bind.
        let ((l1, http), (l2, grpc)) = (reserve_port(), reserve_port());
        drop((l1, l2));
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = Command::new(bin)
            .arg("start")
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--exporter", "otlp", "--otlp-exporter-protocol", "http"])
            .args(["--otlp-exporter-endpoint", upstream])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("the log"))
            .stderr(log.reopen().expect("the log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut c = Rotel {
            child: Some(child),
            port: http,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                c.child = None;
                return Err(format!("(exited: {st})\n{}", c.log_text()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(format!("(did not listen within 30 s)\n{}", c.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of its OTLP/HTTP receiver.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its OTLP/HTTP logs endpoint.
    pub fn logs_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/logs", self.port)
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM (it flushes what it holds), waited for up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The records of a request whose body is protobuf, gzipped when its `Content-Encoding` says
/// so; panics on anything else.
pub fn request_records(r: &CapturedRequest) -> Vec<ReceivedRecord> {
    use prost::Message;
    use std::io::Read;
    let body = match r.header("content-encoding") {
        Some("gzip") => {
            let mut body = Vec::new();
            flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut body)
                .unwrap_or_else(|e| panic!("a gzip body: {e}\n{}", r.framing()));
            body
        }
        None => r.body.clone(),
        Some(other) => panic!("Content-Encoding {other}:\n{}", r.framing()),
    };
    let req = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::decode(
        &body[..],
    )
    .unwrap_or_else(|e| panic!("not an ExportLogsServiceRequest: {e}\n{}", r.framing()));
    flatten(&req)
}

/// Waits until the requests `cap` received hold `n` records (the collector forwards in batches
/// of its own, on its own time): the requests and their records; panics after `timeout`.
pub fn wait_records(
    cap: &CaptureListener,
    n: usize,
    timeout: Duration,
) -> (Vec<CapturedRequest>, Vec<ReceivedRecord>) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = cap.requests();
        let records: Vec<ReceivedRecord> = got.iter().flat_map(request_records).collect();
        if records.len() >= n {
            return (got, records);
        }
        if Instant::now() >= deadline {
            panic!(
                "waited {timeout:?} for {n} records forwarded, got {} in {} requests",
                records.len(),
                got.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
