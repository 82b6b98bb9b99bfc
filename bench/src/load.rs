//! The load generator: `conns` keep-alive connections, one thread each, each sending the
//! pre-encoded requests of one size in turn and waiting for each response (as an OTLP exporter
//! does), as fast as they come back.
//!
//! Protocol on stdout: after connecting and a warm-up it prints `go` and measures for the
//! duration; then it prints `stop <json>` ([`Report`]: what completed in the window and its own
//! CPU time over the window) and exits once its connections are done.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::http::Reader;
use crate::procfs::{self, Cpu};
use crate::workload::{Framing, Workload};

/// Phases (the first, 0, is the warm-up).
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// What the sender reports for the measured window.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Requests whose response arrived within the window.
    pub requests: u64,
    pub records: u64,
    /// Bytes of those requests, heads included.
    pub bytes: u64,
    pub elapsed_s: f64,
    /// The sender's CPU time over the window (all threads).
    pub cpu: Cpu,
    pub errors: u64,
    pub mean_request_bytes: f64,
    pub max_request_bytes: u64,
}

#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    requests: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

pub fn run(
    addr: &str,
    path: &str,
    framing: Framing,
    records: usize,
    conns: usize,
    warmup: f64,
    duration: f64,
) -> Result<()> {
    let w = Arc::new(Workload::with_path(records, path, framing));
    let shared = Arc::new(Shared::default());
    let streams: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let threads: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let (w, shared) = (w.clone(), shared.clone());
            std::thread::spawn(move || {
                if send_loop(s, i, &w, &shared).is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_secs_f64(warmup));
    let cpu0 = procfs::self_cpu();
    let t0 = Instant::now();
    shared.phase.store(MEASURE, Ordering::SeqCst);
    say("go")?;
    std::thread::sleep(Duration::from_secs_f64(duration));
    shared.phase.store(STOP, Ordering::SeqCst);
    let elapsed_s = t0.elapsed().as_secs_f64();
    let cpu = procfs::self_cpu().since(&cpu0);
    let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let report = Report {
        requests: g(&shared.requests),
        records: g(&shared.records),
        bytes: g(&shared.bytes),
        elapsed_s,
        cpu,
        errors: g(&shared.errors),
        mean_request_bytes: w.mean_request_bytes(),
        max_request_bytes: w.max_request_bytes() as u64,
    };
    say(&format!("stop {}", serde_json::to_string(&report)?))?;
    for t in threads {
        let _ = t.join();
    }
    if g(&shared.errors) > 0 {
        bail!("{} connection(s) failed", g(&shared.errors));
    }
    Ok(())
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn send_loop(mut s: TcpStream, first: usize, w: &Workload, sh: &Shared) -> std::io::Result<()> {
    let mut r = Reader::new();
    let n = w.requests.len();
    let mut i = first;
    loop {
        if sh.phase.load(Ordering::Relaxed) == STOP {
            return Ok(());
        }
        let req = &w.requests[i % n];
        let split = w.splits[i % n];
        s.write_all(&req[..split])?;
        if split < req.len() {
            s.write_all(&req[split..])?;
        }
        let h = r
            .read_head(&mut s)?
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        r.skip(&mut s, h.content_length)?;
        if h.status != 200 {
            return Err(std::io::Error::other(format!("status {}", h.status)));
        }
        if sh.phase.load(Ordering::Relaxed) == MEASURE {
            sh.requests.fetch_add(1, Ordering::Relaxed);
            sh.records
                .fetch_add(w.records_per_request as u64, Ordering::Relaxed);
            sh.bytes.fetch_add(req.len() as u64, Ordering::Relaxed);
        }
        i += 1;
    }
}
