//! Medians, ratios and the Markdown report.

use serde::Serialize;

use crate::run::{Machine, Opts, RunResult, Scenario, WorkloadInfo};
use crate::uprobe::UprobeResult;

/// Median, min and max of a figure over the rounds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One scenario at one size, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub size: usize,
    pub scenario: String,
    pub label: String,
    pub runs: usize,
    pub records_per_s_sent: Option<Stat>,
    pub records_per_s_delivered: Option<Stat>,
    pub cpu_ns_per_record: Option<Stat>,
    pub host_busy_ns_per_record: Option<Stat>,
    pub cpu_sender_user_s: Option<Stat>,
    pub cpu_sender_sys_s: Option<Stat>,
    pub cpu_sink_user_s: Option<Stat>,
    pub cpu_sink_sys_s: Option<Stat>,
    pub cpu_agent_user_s: Option<Stat>,
    pub cpu_agent_sys_s: Option<Stat>,
    pub cpu_proxy_user_s: Option<Stat>,
    pub cpu_proxy_sys_s: Option<Stat>,
    pub sink_bytes_per_record_sent: Option<Stat>,
    pub sink_mib: Option<Stat>,
    pub agent_peak_rss_mib: Option<Stat>,
    pub proxy_peak_rss_mib: Option<Stat>,
    pub sink_reads_per_request: Option<Stat>,
    /// TCP segments (machine-wide, both directions' senders) per request the sender sent.
    pub tcp_segments_per_request: Option<Stat>,
    pub dt_msg_runs_per_request: Option<Stat>,
    pub dt_msg_ns_per_run: Option<Stat>,
    pub dt_msg_ns_per_record: Option<Stat>,
    pub steps_per_record: Option<Stat>,
    pub whole_share: Option<Stat>,
    pub notes: Vec<String>,
}

fn stat_of(runs: &[&RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<Stat> {
    Stat::of(&runs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
}

pub fn summarize(runs: &[RunResult], sizes: &[usize], scenarios: &[Scenario]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &size in sizes {
        for sc in scenarios {
            let rs: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.size == size && r.scenario == sc.key)
                .collect();
            let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
            out.push(Summary {
                size,
                scenario: sc.key.into(),
                label: sc.label.into(),
                runs: rs.len(),
                records_per_s_sent: stat_of(&rs, |r| Some(r.records_per_s_sent)),
                records_per_s_delivered: stat_of(&rs, |r| Some(r.records_per_s_delivered)),
                cpu_ns_per_record: stat_of(&rs, |r| Some(r.cpu_ns_per_record)),
                host_busy_ns_per_record: stat_of(&rs, |r| {
                    Some(r.host_busy_s * 1e9 / r.records_sent.max(1) as f64)
                }),
                cpu_sender_user_s: stat_of(&rs, |r| Some(r.cpu_sender.user)),
                cpu_sender_sys_s: stat_of(&rs, |r| Some(r.cpu_sender.sys)),
                cpu_sink_user_s: stat_of(&rs, |r| Some(r.cpu_sink.user)),
                cpu_sink_sys_s: stat_of(&rs, |r| Some(r.cpu_sink.sys)),
                cpu_agent_user_s: stat_of(&rs, |r| r.cpu_agent.map(|c| c.user)),
                cpu_agent_sys_s: stat_of(&rs, |r| r.cpu_agent.map(|c| c.sys)),
                cpu_proxy_user_s: stat_of(&rs, |r| r.cpu_proxy.map(|c| c.user)),
                cpu_proxy_sys_s: stat_of(&rs, |r| r.cpu_proxy.map(|c| c.sys)),
                sink_bytes_per_record_sent: stat_of(&rs, |r| {
                    Some(r.sink_bytes as f64 / r.records_sent.max(1) as f64)
                }),
                sink_mib: stat_of(&rs, |r| Some(r.sink_bytes as f64 / (1024.0 * 1024.0))),
                agent_peak_rss_mib: stat_of(&rs, |r| mib(r.agent_peak_rss_kib)),
                proxy_peak_rss_mib: stat_of(&rs, |r| mib(r.proxy_peak_rss_kib)),
                sink_reads_per_request: stat_of(&rs, |r| {
                    Some(r.sink_read_calls as f64 / r.sink_requests.max(1) as f64)
                }),
                tcp_segments_per_request: stat_of(&rs, |r| {
                    Some(r.tcp_out_segs as f64 / r.requests_sent.max(1) as f64)
                }),
                dt_msg_runs_per_request: stat_of(&rs, |r| {
                    r.progs
                        .iter()
                        .find(|p| p.prog_type == 16)
                        .map(|p| p.run_cnt as f64 / r.requests_sent.max(1) as f64)
                }),
                dt_msg_ns_per_run: stat_of(&rs, |r| r.dt_msg_ns_per_run),
                dt_msg_ns_per_record: stat_of(&rs, |r| r.dt_msg_ns_per_record),
                steps_per_record: stat_of(&rs, |r| r.steps_per_record),
                whole_share: stat_of(&rs, |r| r.whole_share),
                notes: rs
                    .iter()
                    .flat_map(|r| {
                        r.notes
                            .iter()
                            .map(move |n| format!("round {}: {n}", r.round))
                    })
                    .collect(),
            });
        }
    }
    out
}

/// A ratio between two scenarios, computed per round (the runs of one round ran side by side)
/// and summarized over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub name: String,
    pub size: usize,
    pub metric: String,
    /// e.g. ">= 0.90"; None for figures reported for information.
    pub target: Option<String>,
    pub met: Option<bool>,
    pub stat: Option<Stat>,
    pub per_round: Vec<f64>,
}

/// A figure of one run.
type Metric = fn(&RunResult) -> Option<f64>;

fn value(runs: &[RunResult], size: usize, sc: &str, round: usize, f: &Metric) -> Option<f64> {
    runs.iter()
        .find(|r| r.size == size && r.scenario == sc && r.round == round)
        .and_then(f)
}

#[allow(clippy::too_many_arguments)]
fn ratio(
    runs: &[RunResult],
    rounds: usize,
    size: usize,
    name: &str,
    metric: &str,
    target: Option<(&str, f64, bool)>,
    per_round: impl Fn(usize) -> Option<f64>,
) -> Ratio {
    let _ = runs;
    let v: Vec<f64> = (1..=rounds)
        .filter_map(per_round)
        .filter(|x| x.is_finite())
        .collect();
    let stat = Stat::of(&v);
    let met = match (target, stat) {
        (Some((_, t, at_least)), Some(s)) => Some(if at_least {
            s.median >= t
        } else {
            s.median <= t
        }),
        _ => None,
    };
    Ratio {
        name: name.into(),
        size,
        metric: metric.into(),
        target: target.map(|(t, _, _)| t.to_string()),
        met,
        stat,
        per_round: v,
    }
}

pub fn ratios(runs: &[RunResult], sizes: &[usize], rounds: usize) -> Vec<Ratio> {
    let mut out = Vec::new();
    let sent: Metric = |r| Some(r.records_per_s_sent);
    let cpu: Metric = |r| Some(r.cpu_ns_per_record);
    let msg: Metric = |r| r.dt_msg_ns_per_record;
    for &size in sizes {
        let div = |a: &'static str, b: &'static str, f: Metric| {
            move |round: usize| {
                Some(value(runs, size, a, round, &f)? / value(runs, size, b, round, &f)?)
            }
        };
        out.push(ratio(
            runs,
            rounds,
            size,
            "(b)/(a) throughput",
            "records/s sent, agent with no rules over no agent",
            (size == 100).then_some((">= 0.90", 0.90, true)),
            div("b", "a", sent),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(d)/(f) CPU per record",
            "whole-path CPU ns per record sent, kernel drop over userspace proxy drop (the \
             target is 0.30 at 100 records a request, 0.20 the moonshot)",
            Some(if size == 100 {
                ("<= 0.30", 0.30, false)
            } else {
                ("<= 0.20", 0.20, false)
            }),
            div("d", "f", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(d)/(f) added CPU per record",
            "whole-path CPU ns per record minus that of (a), kernel drop over userspace proxy drop",
            None,
            |round| {
                let a = value(runs, size, "a", round, &cpu)?;
                Some(
                    (value(runs, size, "d", round, &cpu)? - a)
                        / (value(runs, size, "f", round, &cpu)? - a),
                )
            },
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(c)/(f) CPU per record",
            "whole-path CPU ns per record sent, 10 count rules in the kernel over the userspace proxy's drop",
            (size == 100).then_some(("<= 0.60", 0.60, false)),
            div("c", "f", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(d) dt_msg / (a) CPU per record",
            "dt_msg ns per record in (d) over the whole no-agent path's CPU ns per record",
            (size == 100).then_some(("<= 1.00", 1.0, false)),
            |round| {
                Some(value(runs, size, "d", round, &msg)? / value(runs, size, "a", round, &cpu)?)
            },
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(d)/(l) CPU per record",
            "whole-path CPU ns per record sent, kernel drop over a real OpenTelemetry collector's drop",
            None,
            div("d", "l", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(d)/(l) added CPU per record",
            "whole-path CPU ns per record minus that of (a): what dt adds over what the collector adds",
            (size == 100).then_some(("<= 0.05", 0.05, false)),
            |round| {
                let a = value(runs, size, "a", round, &cpu)?;
                Some(
                    (value(runs, size, "d", round, &cpu)? - a)
                        / (value(runs, size, "l", round, &cpu)? - a),
                )
            },
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(e)/(c) dt_msg cost per record",
            "dt_msg run time (bpf_stats) per record, 64 rules over 10",
            Some(("<= 2", 2.0, false)),
            div("e", "c", msg),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(e)/(c) CPU per record",
            "whole-path CPU ns per record, 64 rules over 10",
            Some(if size == 100 {
                ("<= 1.2", 1.2, false)
            } else {
                ("<= 2", 2.0, false)
            }),
            div("e", "c", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(g)/(d) CPU per record",
            "whole-path CPU ns per record sent, chunked requests (Node.js framing) over \
             Content-Length ones, same drop rule",
            (size == 100).then_some(("<= 1.10", 1.10, false)),
            div("g", "d", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(g)/(d) dt_msg cost per record",
            "dt_msg run time (bpf_stats) per record, chunked over Content-Length",
            None,
            div("g", "d", msg),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(i)/(c) dt_msg cost per record",
            "dt_msg run time per record, realistic needles over the (c) needles that all start \
             with '#'",
            None,
            div("i", "c", msg),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(h)/(d) CPU per record",
            "whole-path CPU ns per record sent, the drop rule keeping what it drops in a \
             flight recorder over the same rule without one",
            (size == 100).then_some(("<= 1.5", 1.5, false)),
            div("h", "d", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(h)/(d) dt_msg cost per record",
            "dt_msg run time (bpf_stats) per record, with a recorder over without",
            None,
            div("h", "d", msg),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(j)/(d) CPU per record",
            "whole-path CPU ns per record sent, the drop rule with [enrich] over without",
            (size == 100).then_some(("<= 1.3", 1.3, false)),
            div("j", "d", cpu),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(j)/(d) dt_msg cost per record",
            "dt_msg run time (bpf_stats) per record, with [enrich] over without",
            None,
            div("j", "d", msg),
        ));
        out.push(ratio(
            runs,
            rounds,
            size,
            "(d)/(k) CPU per record",
            "whole-path CPU ns per record sent, BPF run-time statistics on over off: what the \
             cost ceiling's measuring costs",
            None,
            div("d", "k", cpu),
        ));
    }
    out.retain(|r| r.stat.is_some());
    out
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn with_range(s: Option<Stat>, f: impl Fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

fn med(s: Option<Stat>, f: impl Fn(f64) -> String) -> String {
    s.map(|s| f(s.median)).unwrap_or_else(|| "–".into())
}

fn us(u: Option<Stat>, s: Option<Stat>) -> String {
    match (u, s) {
        (Some(u), Some(s)) => format!("{:.2}/{:.2}", u.median, s.median),
        _ => "–".into(),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn markdown(
    m: &Machine,
    o: &Opts,
    w: &[WorkloadInfo],
    runs: &[RunResult],
    sums: &[Summary],
    ratios: &[Ratio],
    up: &UprobeResult,
    total_s: f64,
) -> String {
    let mut s = String::new();
    let n0 = |v: f64| format!("{v:.0}");
    let n1 = |v: f64| format!("{v:.1}");
    s += "## dt bench\n\n";
    s += &format!(
        "- Machine: {} CPUs ({}), kernel {}, load average {} at the start and {} at the end.\n",
        m.nproc, m.cpu_model, m.kernel, m.loadavg_start, m.loadavg_end
    );
    s += &format!(
        "- Runs: {} rounds, scenarios interleaved; each run {:.1} s measured after {:.1} s of \
         warm-up, {} keep-alive connections; `dt-agent run --max-request {}`. {:.0} s in all.\n",
        o.rounds, o.duration, o.warmup, o.conns, o.max_request, total_s
    );
    if let Some(other) = Stat::of(&runs.iter().map(|r| r.other_cpus).collect::<Vec<_>>()) {
        s += &format!(
            "- Other CPU use during the measured windows (the machine's busy time minus the \
             measured processes'): median {:.2}, max {:.2} CPUs.\n",
            other.median, other.max
        );
    }
    if let Some(g) = &m.git {
        s += &format!("- Source: `{g}`.\n");
    }
    let verified = runs
        .iter()
        .flat_map(|r| &r.progs)
        .filter(|p| p.prog_type == 16)
        .map(|p| p.verified_insns)
        .max()
        .filter(|&n| n > 0);
    if let Some(n) = verified {
        s += &format!(
            "- The sk_msg program: {n} instructions verified, {:.1}% of the kernel's 1,000,000.\n",
            n as f64 / 10_000.0
        );
    }
    s += "- Requests: ";
    s += &w
        .iter()
        .map(|w| {
            format!(
                "{} records ≈ {:.1} KiB ({:.0} B/record)",
                w.records_per_request,
                w.mean_request_bytes / 1024.0,
                w.mean_request_bytes / w.records_per_request as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    s += ".\n\n";

    s += "### Throughput and CPU per record: median (min–max)\n\n";
    s += "| rec/req | scenario | records/s sent | records/s delivered | CPU ns/record | host busy ns/record | B into sink per record sent | peak RSS MiB |\n";
    s += "|---:|---|---:|---:|---:|---:|---:|---:|\n";
    for x in sums {
        s += &format!(
            "| {} | ({}) {} | {} | {} | {} | {} | {} | {} |\n",
            x.size,
            x.scenario,
            x.label,
            with_range(x.records_per_s_sent, rate),
            with_range(x.records_per_s_delivered, rate),
            with_range(x.cpu_ns_per_record, n0),
            med(x.host_busy_ns_per_record, n0),
            med(x.sink_bytes_per_record_sent, n0),
            match (x.agent_peak_rss_mib, x.proxy_peak_rss_mib) {
                (Some(a), _) => format!("agent {}", n1(a.median)),
                (_, Some(p)) => format!("proxy {}", n1(p.median)),
                _ => "–".into(),
            }
        );
    }
    s += &format!(
        "\n### CPU seconds (user/sys) over the {:.1} s window, and the sk_msg program (bpf_stats): median\n\n",
        o.duration
    );
    s += "| rec/req | scenario | sender | sink | agent | proxy | sink reads/request | TCP segments/request | dt_msg runs/request | dt_msg ns/run | dt_msg ns/record (min–max) | walk steps/record | records taken whole |\n";
    s += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for x in sums {
        s += &format!(
            "| {} | ({}) {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            x.size,
            x.scenario,
            x.label,
            us(x.cpu_sender_user_s, x.cpu_sender_sys_s),
            us(x.cpu_sink_user_s, x.cpu_sink_sys_s),
            us(x.cpu_agent_user_s, x.cpu_agent_sys_s),
            us(x.cpu_proxy_user_s, x.cpu_proxy_sys_s),
            med(x.sink_reads_per_request, |v| format!("{v:.1}")),
            med(x.tcp_segments_per_request, |v| format!("{v:.1}")),
            med(x.dt_msg_runs_per_request, |v| format!("{v:.2}")),
            med(x.dt_msg_ns_per_run, n0),
            with_range(x.dt_msg_ns_per_record, n1),
            med(x.steps_per_record, |v| format!("{v:.1}")),
            med(x.whole_share, |v| format!("{:.0}%", v * 100.0)),
        );
    }
    s += "\n### Ratios (per round, then median (min–max) over the rounds)\n\n";
    s += "| ratio | rec/req | value | target | |\n|---|---:|---:|---:|---|\n";
    for r in ratios {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.name,
            r.size,
            with_range(r.stat, |v| format!("{v:.3}")),
            r.target.clone().unwrap_or_else(|| "–".into()),
            match r.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            }
        );
    }
    s += "\n### uprobe\n\n";
    s += &format!("| uprobe overhead | {} |\n|---|---|\n", up.summary());
    let notes: Vec<String> = sums
        .iter()
        .flat_map(|x| {
            x.notes
                .iter()
                .map(move |n| format!("- {} ({}) {}: {n}", x.size, x.scenario, x.label))
        })
        .collect();
    if !notes.is_empty() {
        s += "\n### Notes\n\n";
        s += &notes.join("\n");
        s += "\n";
    }
    s
}
