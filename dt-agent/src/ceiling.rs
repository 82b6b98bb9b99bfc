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
    let mut every = tokio::time::interval(ceiling.window);
    every.tick().await;
    loop {
        every.tick().await;
        let now = Instant::now();
        let Some((ns, runs, epoch)) = sample(&service).await else {
            return;
        };
        let (then, before) = last;
        last = (now, Some((ns, runs, epoch)));
        // A window across an `enable` starts over: the load that tripped it must not trip it
        // again at once.
        let Some((ns0, runs0, _)) = before.filter(|b| b.2 == epoch) else {
            continue;
        };
        let wall = now.duration_since(then).as_nanos().max(1) as u64;
        let kernel_ns = ns.saturating_sub(ns0);
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

/// The agent's programs' run time, runs and enable epoch; `None` once the agent is gone.
async fn sample(service: &Arc<Service>) -> Option<(u64, u64, u64)> {
    let s = service.clone();
    tokio::task::spawn_blocking(move || s.run_time())
        .await
        .ok()
        .flatten()
}
