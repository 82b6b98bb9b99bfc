//! The cost ceiling (`[ceiling] cpu`, `window`): dt measures the CPU time its kernel programs
//! take and, over the ceiling, pulls its own rip cord.
//!
//! How: while a ceiling is configured the agent holds BPF run-time statistics on
//! (`BPF_ENABLE_STATS`, for as long as it holds the file descriptor; off again when the agent
//! exits), so the kernel adds each run of each BPF program's time to the program's
//! `run_time_ns`. Once a window the agent reads the sum over its programs (sk_msg, sock_ops,
//! every uprobe), and divides the difference by the window times the CPUs online: the share of
//! all CPUs dt's kernel programs took. Over the ceiling, it pulls the rip cord (every request
//! passes untouched, uprobe evaluation stops) with a `disabled_reason` that gives the measured
//! and allowed figures, and logs it. `dt-agent enable` re-arms: the next window over the
//! ceiling pulls it again (a window across the `enable` is not counted).
//!
//! What measuring costs: the kernel reads the clock twice around each program run (the
//! statistics; about 20–40 ns a run on this machine kind, see BENCHMARKS.md), and the agent
//! makes one `BPF_OBJ_GET_INFO_BY_FD` call per program and window.

use std::sync::Arc;
use std::time::Instant;

use crate::service::Service;
use crate::settings::{CeilingSettings, format_ppm};
use crate::stats::CostStats;
use crate::sys;

/// Measures every window and trips the rip cord over the CPU ceiling, until the task is dropped.
pub async fn watch(service: Arc<Service>, ceiling: CeilingSettings) {
    // Without a CPU ceiling the statistics stay off (they cost a little per run): the
    // measurement then reports the other costs only.
    let cpu_ceiling = ceiling.cpu_ppm.unwrap_or(0);
    let stats_fd = match ceiling.cpu_ppm {
        None => None,
        Some(cpu) => match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::error!(
                    "ceiling: cannot turn on BPF run-time statistics ({e}); the CPU ceiling of \
                     {} is not enforced",
                    format_ppm(cpu)
                );
                None
            }
        },
    };
    if ceiling.cpu_ppm.is_some() {
        log::info!(
            "ceiling: dt's kernel programs may take {} of all CPUs, measured every {:?}",
            format_ppm(cpu_ceiling),
            ceiling.window
        );
    }
    let cpus = sys::online_cpus();
    let mut exceeded = 0u64;
    let mut last = (Instant::now(), sample(&service).await);
    // A window's waits for pages whose runs had not ended when it was read: taken from the
    // next window's run time, which has them.
    let mut owed = 0u64;
    let mut every = tokio::time::interval(ceiling.window);
    every.tick().await;
    loop {
        every.tick().await;
        let now = Instant::now();
        let Some(s) = sample(&service).await else {
            return;
        };
        let (then, before) = last;
        last = (now, Some(s));
        // A window across an `enable` starts over: the load that tripped it must not trip it
        // again at once.
        let Some(s0) = before.filter(|b| b.epoch == s.epoch) else {
            owed = 0;
            continue;
        };
        let (runs, runs0) = (s.runs, s0.runs);
        let wall = now.duration_since(then).as_nanos().max(1) as u64;
        let run_ns = s.ns.saturating_sub(s0.ns);
        let waited = s.waited_ns.saturating_sub(s0.waited_ns);
        // Owed for one window only: waits of a run that began before the statistics were on
        // are in no run time, and must not hide real CPU for long.
        let (kernel_ns, next_owed) = cpu_of(run_ns, waited, owed);
        owed = next_owed;
        let cpu_ppm = (kernel_ns as u128 * 1_000_000 / (wall as u128 * cpus as u128)) as u64;
        let over = stats_fd.is_some() && cpu_ppm > cpu_ceiling;
        if over {
            exceeded += 1;
        }
        let cost = CostStats {
            window_ms: wall / 1_000_000,
            cpus,
            kernel_ns,
            runs: runs.saturating_sub(runs0),
            cpu_ppm,
            cpu_ceiling_ppm: cpu_ceiling,
            exceeded,
            map_bytes: 0,
        };
        let reason = over.then(|| {
            format!(
                "ceiling: dt's kernel programs took {} of all {cpus} CPUs over the last {} ms \
                 ({} µs of CPU time in {} runs), over the ceiling of {}; every request passes \
                 untouched until `dt-agent enable`",
                format_ppm(cpu_ppm.max(1)),
                cost.window_ms,
                kernel_ns / 1000,
                cost.runs,
                format_ppm(cpu_ceiling)
            )
        });
        let s = service.clone();
        let tripped = tokio::task::spawn_blocking(move || s.record_cost(cost, reason))
            .await
            .unwrap_or(None);
        if let Some(reason) = tripped {
            log::error!("{reason}");
        }
    }
}

/// One reading of the agent's programs.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Run time of every program, ns (BPF run-time statistics).
    pub ns: u64,
    pub runs: u64,
    /// The uprobe program's waits for pages, ns: in `ns`, but asleep.
    pub waited_ns: u64,
    /// The rip cord's enable epoch.
    pub epoch: u64,
}

/// A window's CPU: its run time less its waits for pages and what the last window owed;
/// and what this one owes the next (waits read before their runs ended).
fn cpu_of(run_ns: u64, waited_ns: u64, owed: u64) -> (u64, u64) {
    let taken = waited_ns.saturating_add(owed);
    (
        run_ns.saturating_sub(taken),
        taken.saturating_sub(run_ns).min(waited_ns),
    )
}

/// The agent's programs' run time, runs, waits and enable epoch; `None` once the agent is gone.
async fn sample(service: &Arc<Service>) -> Option<Sample> {
    let s = service.clone();
    tokio::task::spawn_blocking(move || s.run_time())
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::cpu_of;

    #[test]
    fn waits_for_pages_are_not_cpu() {
        // 3 ms of run time, 2 of them a wait: 1 ms of CPU.
        assert_eq!(cpu_of(3_000_000, 2_000_000, 0), (1_000_000, 0));
        // A wait read before its run ended: none of this window's 1 ms is CPU, and the
        // 2.5 s owed are taken from the next window, which has them in its run time.
        assert_eq!(cpu_of(1_000_000, 2_500_000_000, 0), (0, 2_499_000_000));
        assert_eq!(
            cpu_of(2_500_300_000, 0, 2_499_000_000),
            (1_300_000, 0),
            "the next window: its own 1.3 ms only"
        );
        // Owed for one window only: a wait in no run time (its run began before the
        // statistics were on) hides nothing after the next window.
        let (cpu, owed) = cpu_of(0, 5_000_000_000, 0);
        assert_eq!((cpu, owed), (0, 5_000_000_000));
        let (cpu, owed) = cpu_of(1_000_000, 0, owed);
        assert_eq!((cpu, owed), (0, 0));
        assert_eq!(cpu_of(1_000_000, 0, owed), (1_000_000, 0));
    }
}
