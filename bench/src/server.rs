//! What the sink and the proxy share: counters, the stdin control channel, the accept loop.
//!
//! Control: the process prints `port N` once it listens. Then each `snap` line on stdin is
//! answered with one JSON line ([`Snap`]: its counters, its own CPU time and peak RSS), and EOF
//! on stdin makes it exit.

use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::procfs::{self, Cpu};

/// Counters of a sink or proxy.
#[derive(Default)]
pub struct Counters {
    /// Requests received (sink) or forwarded (proxy).
    pub requests: AtomicU64,
    /// Bytes received from clients, heads included.
    pub bytes_in: AtomicU64,
    /// Bytes forwarded upstream, heads included (proxy).
    pub bytes_out: AtomicU64,
    /// Records decoded (verifying sink) or received (proxy).
    pub records_in: AtomicU64,
    /// Records forwarded (proxy).
    pub records_out: AtomicU64,
    /// Requests that failed verification (verifying sink).
    pub bad: AtomicU64,
    /// Requests that arrived chunked as the Node.js SDK sends them: one data chunk, no trailers
    /// (sink).
    pub chunked: AtomicU64,
    /// Connections that ended with an I/O or protocol error.
    pub errors: AtomicU64,
}

/// One answer to `snap`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Snap {
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub bad: u64,
    #[serde(default)]
    pub chunked: u64,
    pub errors: u64,
    pub cpu: Cpu,
    pub peak_rss_kib: u64,
    /// `read` calls on connections so far.
    pub read_calls: u64,
}

impl Counters {
    pub fn snap(&self) -> Snap {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snap {
            requests: g(&self.requests),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            records_in: g(&self.records_in),
            records_out: g(&self.records_out),
            bad: g(&self.bad),
            chunked: g(&self.chunked),
            errors: g(&self.errors),
            cpu: procfs::self_cpu(),
            peak_rss_kib: procfs::peak_rss_kib(std::path::Path::new("/proc/self")).unwrap_or(0),
            read_calls: crate::http::read_calls(),
        }
    }
}

pub fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Binds `listen`, prints `port N`, serves each connection on a thread of its own with
/// `handle`, and answers the control channel on stdin until EOF; then exits the process.
pub fn serve<F>(listen: &str, counters: Arc<Counters>, handle: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream, &Counters) -> std::io::Result<()> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(listen)?;
    let port = listener.local_addr()?.port();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "port {port}")?;
        out.flush()?;
    }
    let handle = Arc::new(handle);
    let c = counters.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            let c = c.clone();
            std::thread::spawn(move || {
                if handle(stream, &c).is_err() {
                    add(&c.errors, 1);
                }
            });
        }
    });
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim() == "snap" {
            let s = serde_json::to_string(&counters.snap())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{s}")?;
            out.flush()?;
        }
    }
    std::process::exit(0)
}
