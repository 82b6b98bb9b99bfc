//! Requests held in the kernel, as an agent that is about to detach sees them.
//!
//! The kernel frees corked bytes when their socket leaves the SockHash, which happens when the
//! programs and maps go (an unpinned agent exiting, `uninstall`). So before detaching, the agent
//! switches to pass-through (no new request is corked) and waits, with no deadline, until no
//! request is held, saying every few seconds who holds one (the `HELD` map: sender, ports, since
//! when).

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

/// How often a waiting agent logs who it waits for.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// One held request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRequest {
    /// The sending process (its tgid) and its name (`/proc/PID/comm`; empty once it is gone).
    pub pid: u32,
    pub comm: String,
    pub local_port: u16,
    pub remote_port: u16,
    /// How long it has been held, in milliseconds.
    pub held_ms: u64,
    /// The request's length: dt holds it until all of it has been sent.
    pub bytes: u32,
    /// Only the request's head has been sent so far, and not all of it.
    pub head: bool,
}

/// Every request held now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// Requests held (the `in_flight` counter).
    pub in_flight: u64,
    /// Who holds them, longest held first (may list fewer than `in_flight`).
    pub held: Vec<HeldRequest>,
}

impl Holding {
    pub fn is_empty(&self) -> bool {
        self.in_flight == 0
    }
}

impl fmt::Display for HeldRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Any process may name itself anything (prctl): escaped.
        let comm = if self.comm.is_empty() {
            "?".to_string()
        } else {
            crate::text::printable(&self.comm)
        };
        write!(
            f,
            "pid {} ({comm}), port {} -> {}, held {:.1} s, {} {} bytes",
            self.pid,
            self.local_port,
            self.remote_port,
            self.held_ms as f64 / 1000.0,
            if self.head { "head of" } else { "request of" },
            self.bytes,
        )
    }
}

impl fmt::Display for Holding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} request(s) held in the kernel, waiting for their senders to send the rest",
            self.in_flight
        )?;
        for h in &self.held {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

/// Progress of `uninstall`, as the agent answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UninstallStatus {
    /// Everything is detached and unpinned; the agent is stopping.
    pub done: bool,
    /// What the agent still waits for before detaching.
    pub waiting: Holding,
    /// The wait of an `uninstall` was cut short by `uninstall --now`: the requests held then,
    /// lost. Answered to the waiting `uninstall` (which asks again every 200 ms) during the
    /// moment the agent stays up for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_short: Option<Holding>,
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The name of process `pid`, or empty.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_who_holds() {
        let h = Holding {
            in_flight: 2,
            held: vec![
                HeldRequest {
                    pid: 4242,
                    comm: "otelcol".into(),
                    local_port: 51234,
                    remote_port: 4318,
                    held_ms: 6049,
                    bytes: 3068,
                    head: false,
                },
                HeldRequest {
                    pid: 7,
                    comm: String::new(),
                    local_port: 1,
                    remote_port: 4318,
                    held_ms: 10,
                    bytes: 40,
                    head: true,
                },
            ],
        };
        assert_eq!(
            h.to_string(),
            "2 request(s) held in the kernel, waiting for their senders to send the rest; \
             pid 4242 (otelcol), port 51234 -> 4318, held 6.0 s, request of 3068 bytes; \
             pid 7 (?), port 1 -> 4318, held 0.0 s, head of 40 bytes"
        );
        assert!(!h.is_empty() && Holding::default().is_empty());
        let s = UninstallStatus {
            done: false,
            waiting: h,
            cut_short: None,
        };
        let back: UninstallStatus =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        assert!(a > 0 && monotonic_ns() >= a);
    }
}
