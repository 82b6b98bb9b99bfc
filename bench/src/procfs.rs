//! CPU time, peak RSS and BPF program run-time counters, from getrusage and /proc.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// User and system CPU seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    pub fn total(&self) -> f64 {
        self.user + self.sys
    }

    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            sys: self.sys - earlier.sys,
        }
    }
}

/// This process's CPU time, all threads (getrusage RUSAGE_SELF, microsecond resolution).
pub fn self_cpu() -> Cpu {
    // SAFETY: getrusage writes the struct we pass; RUSAGE_SELF is always valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu {
        user: secs(ru.ru_utime),
        sys: secs(ru.ru_stime),
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time of process `pid`, all threads, from /proc/<pid>/stat (clock-tick resolution).
pub fn pid_cpu(pid: u32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    let tick = clock_ticks();
    Some(Cpu {
        user: f.get(11)?.parse::<f64>().ok()? / tick,
        sys: f.get(12)?.parse::<f64>().ok()? / tick,
    })
}

/// Peak resident set size in KiB (VmHWM) of `/proc/<pid>` or `/proc/self`.
pub fn peak_rss_kib(proc_dir: &Path) -> Option<u64> {
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// TCP segments sent by the whole machine so far (`Tcp: OutSegs` of /proc/net/snmp). On
/// loopback every segment sent is also received, so its delta over a window, per request,
/// says in how many pieces (skbs) requests travel.
pub fn tcp_out_segs() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Whole-machine CPU time from /proc/stat, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct HostCpu {
    /// user + nice + system + irq + softirq + steal.
    pub busy: f64,
    /// softirq alone (loopback delivery can run there, outside any process's times).
    pub softirq: f64,
    pub idle: f64,
}

pub fn host_cpu() -> HostCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0.0) / clock_ticks();
    // user nice system idle iowait irq softirq steal
    HostCpu {
        busy: g(0) + g(1) + g(2) + g(5) + g(6) + g(7),
        softirq: g(6),
        idle: g(3) + g(4),
    }
}

/// A BPF program held open by a process, with its run-time counters (which count only while
/// BPF statistics are enabled).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProgStats {
    pub id: u32,
    pub prog_type: u32,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Instructions the verifier processed to load it (0 when the kernel does not say): how
    /// much of its 1,000,000 budget the program takes.
    #[serde(default)]
    pub verified_insns: u64,
}

/// Name of a BPF program type number (the ones dt uses).
pub fn prog_type_name(t: u32) -> String {
    match t {
        13 => "sock_ops".into(),
        16 => "sk_msg".into(),
        2 => "kprobe".into(),
        n => format!("type {n}"),
    }
}

/// The BPF programs process `pid` holds file descriptors of, one entry per program id.
pub fn bpf_progs(pid: u32) -> Vec<ProgStats> {
    let mut out: Vec<ProgStats> = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(fdinfo) else {
            continue;
        };
        let field = |k: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
                .unwrap_or(0)
        };
        let p = ProgStats {
            id: field("prog_id") as u32,
            prog_type: field("prog_type") as u32,
            name: String::new(),
            run_cnt: field("run_cnt"),
            run_time_ns: field("run_time_ns"),
            verified_insns: field("verified_insns"),
        };
        if !out.iter().any(|q| q.id == p.id) {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.id);
    out
}

/// Keeps BPF run-time statistics enabled while alive (BPF_ENABLE_STATS; the kernel turns them
/// off again when the descriptor closes, even if this process dies). It raises the same
/// reference count as `sysctl kernel.bpf_stats_enabled=1` without touching the sysctl's own
/// value, so nothing needs restoring and a setting made by someone else stays as it was.
pub struct BpfStatsGuard {
    fd: libc::c_int,
}

impl BpfStatsGuard {
    pub fn enable() -> std::io::Result<BpfStatsGuard> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&0u32.to_ne_bytes());
        // SAFETY: bpf(2) reads `size` bytes of `attr`, which is that long.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(BpfStatsGuard {
            fd: fd as libc::c_int,
        })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}
