//! The processes of one bench run: sink, proxy and load generator (this binary's own verbs), and
//! `dt-agent run`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load::Report;
use crate::server::Snap;

/// Waits (bounded) for `child` to exit; kills it (SIGKILL) after `timeout`. Returns whether it
/// exited on its own.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A sink or proxy child, driven over its stdin/stdout (see `server.rs`).
pub struct Server {
    what: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
}

impl Server {
    pub fn spawn(what: &'static str, mut cmd: Command) -> Result<Server> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn the {what}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("the {what} did not report its port (got {line:?})"))?;
        Ok(Server {
            what,
            child,
            stdin,
            stdout,
            port,
        })
    }

    pub fn snap(&mut self) -> Result<Snap> {
        let stdin = self.stdin.as_mut().expect("running");
        stdin.write_all(b"snap\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(line.trim())
            .with_context(|| format!("the {} answered snap with {line:?}", self.what))
    }

    /// Closes its stdin (it exits) and reaps it.
    pub fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        if !wait_bounded(&mut self.child, Duration::from_secs(10))? {
            bail!("the {} did not exit when its stdin closed", self.what);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The load generator child: `go`, then `stop <json>`.
pub struct Sender {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Sender {
    pub fn spawn(mut cmd: Command) -> Result<Sender> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn the load generator")?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Sender { child, stdout })
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let st = self.child.wait()?;
            bail!("the load generator exited early ({st})");
        }
        Ok(line.trim().to_string())
    }

    /// Waits for `go`.
    pub fn wait_go(&mut self) -> Result<()> {
        let l = self.line()?;
        if l != "go" {
            bail!("the load generator said {l:?} instead of go");
        }
        Ok(())
    }

    /// Waits for `stop <json>`.
    pub fn wait_stop(&mut self) -> Result<Report> {
        let l = self.line()?;
        let json = l
            .strip_prefix("stop ")
            .with_context(|| format!("the load generator said {l:?} instead of stop"))?;
        Ok(serde_json::from_str(json)?)
    }

    pub fn finish(mut self) -> Result<()> {
        if !wait_bounded(&mut self.child, Duration::from_secs(30))? {
            bail!("the load generator did not finish");
        }
        let st = self.child.wait()?;
        if !st.success() {
            bail!("the load generator failed ({st})");
        }
        Ok(())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `dt-agent run`.
pub struct Agent {
    bin: PathBuf,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

/// How long the agent may take to answer on its socket.
const AGENT_START: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts `dt-agent run` on `rules` hooking `port` (not pinned, its own socket, an empty
    /// config so that no /etc/dt/agent.toml applies) and waits until `dt-agent stats` answers.
    pub fn start(
        bin: &Path,
        work: &Path,
        rules: &Path,
        port: u16,
        max_request: u32,
    ) -> Result<Agent> {
        let socket = work.join("agent.sock");
        let config = work.join("agent.toml");
        // Everything else comes from flags. Recorders need a capture endpoint; nothing flushes
        // in the bench, so nothing listens there.
        std::fs::write(
            &config,
            "# dt-bench\ncapture_endpoint = \"http://127.0.0.1:9/v1/logs\"\n",
        )?;
        let log = work.join("agent.log");
        let logf = std::fs::File::create(&log)?;
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(bin)
            .arg("run")
            .arg("--rules")
            .arg(rules)
            .arg("--port")
            .arg(port.to_string())
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .arg("--no-pin")
            .arg("--max-request")
            .arg(max_request.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut agent = Agent {
            bin: bin.to_path_buf(),
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + AGENT_START;
        loop {
            if let Some(st) = agent.child.as_mut().unwrap().try_wait()? {
                agent.child = None;
                bail!("dt-agent run exited ({st}); log:\n{}", agent.log_text());
            }
            if agent
                .verb(&["stats"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                bail!(
                    "dt-agent run did not answer within {AGENT_START:?}; log:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn verb(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()?)
    }

    /// `dt-agent stats --json`.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let o = self.verb(&["stats", "--json"])?;
        if !o.status.success() {
            bail!(
                "dt-agent stats failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(serde_json::from_slice(&o.stdout)?)
    }

    /// SIGTERM, and waits for a clean exit (it drains and detaches).
    pub fn stop(mut self) -> Result<()> {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if !wait_bounded(&mut child, Duration::from_secs(30))? {
            bail!("dt-agent did not exit within 30 s of SIGTERM (killed)");
        }
        let st = child.wait()?;
        if !st.success() {
            bail!("dt-agent exited with {st}; log:\n{}", self.log_text());
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in stop().
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let _ = wait_bounded(&mut c, Duration::from_secs(30));
        }
    }
}

/// The OpenTelemetry collector of scenario (l): Rotel (`rotel-agent start`), receiving OTLP/HTTP
/// on a port of its own, dropping records below INFO in its Python logs processor, and
/// exporting OTLP/HTTP protobuf to the sink: gzipped, whatever `--otlp-exporter-compression none`
/// (or its logs variant) says in this version, as the Collector's `otlphttp` exporter does by
/// default.
pub struct Collector {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

/// The collector's logs processor: the rule of scenario (d), `severity < INFO` (SeverityNumber
/// 1–8), as Rotel's Python processor API writes it.
const COLLECTOR_PROCESSOR: &str = "\
# dt-bench scenario (l): drop records with SeverityNumber 1-8 (below INFO), as (d) does.
from rotel_sdk.open_telemetry.logs.v1 import ResourceLogs


def process_logs(resource_logs: ResourceLogs):
    for scope_logs in resource_logs.scope_logs:
        scope_logs.log_records = [
            r for r in scope_logs.log_records if not (1 <= r.severity_number < 9)
        ]
";

/// A port free on 127.0.0.1 now (bound, read, released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Collector {
    /// Starts the collector forwarding to `upstream` and waits until its HTTP receiver accepts
    /// connections.
    pub fn start(bin: &Path, work: &Path, upstream: u16) -> Result<Collector> {
        let processor = work.join("collector_drop.py");
        std::fs::write(&processor, COLLECTOR_PROCESSOR)?;
        let (http, grpc) = (free_port()?, free_port()?);
        let log = work.join("collector.log");
        let logf = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("start")
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--exporter", "otlp", "--otlp-exporter-protocol", "http"])
            .args(["--otlp-exporter-compression", "none"])
            .args([
                "--otlp-exporter-endpoint",
                &format!("http://127.0.0.1:{upstream}"),
            ])
            .arg("--otlp-with-logs-processor")
            .arg(&processor)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut c = Collector {
            child: Some(child),
            port: http,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.child.as_mut().unwrap().try_wait()? {
                c.child = None;
                bail!("the collector exited ({st}); log:\n{}", c.log_text());
            }
            if std::net::TcpStream::connect(("127.0.0.1", http)).is_ok() {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the collector did not listen within 30 s; log:\n{}",
                    c.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            wait_bounded(&mut child, Duration::from_secs(10))?;
        }
        Ok(())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
