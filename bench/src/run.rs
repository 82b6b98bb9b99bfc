//! `dt-bench run`: every scenario at every request size, in interleaved rounds, then the table,
//! the ratios and the JSON file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::procfs::{self, BpfStatsGuard, Cpu, HostCpu, ProgStats};
use crate::procs::{Agent, Collector, Sender, Server};
use crate::report;
use crate::server::Snap;
use crate::uprobe;
use crate::workload::{self, Framing, Workload};

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct Opts {
    /// The dt-agent binary (release build).
    #[arg(long)]
    pub agent: PathBuf,
    /// Where the raw figures go (JSON); the rule sets and logs go to its directory.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// Rounds: every scenario runs once per round, interleaved.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Seconds of load before the measured window of each run.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Keep-alive connections (one sender thread each).
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Records per request (multiples of 10).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub sizes: Vec<usize>,
    /// Scenarios to run (a–l; see BENCHMARKS.md).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e,f,g,l")]
    pub scenarios: Vec<String>,
    /// `dt-agent run --max-request`: 512 KiB, the ceiling, because 1,000-record requests are
    /// about 360 KB.
    #[arg(long, default_value_t = 524_288)]
    pub max_request: u32,
    /// Skip the correctness step (decoding sink) before the rounds.
    #[arg(long)]
    pub no_verify: bool,
    /// Skip the uprobe measurement.
    #[arg(long)]
    pub no_uprobe: bool,
    /// The OpenTelemetry collector of scenario (l): Rotel's `rotel-agent` binary (`cargo xtask
    /// bench` installs it from PyPI). Without it, (l) is left out, with the reason printed.
    #[arg(long)]
    pub collector: Option<PathBuf>,
}

/// How a scenario is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The sender talks to the sink directly.
    Direct,
    /// dt-agent attached, with this rule set (None: an empty rules directory).
    Agent(Option<RuleSet>),
    /// The sender talks to the userspace filtering proxy, which forwards to the sink.
    Proxy,
    /// The sender talks to a real OpenTelemetry collector (Rotel) filtering in its processor,
    /// which exports to the sink.
    Collector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleSet {
    Count10,
    Drop90,
    Count64,
    /// (d)'s drop rule, keeping what it drops in a flight recorder.
    Drop90Recorded,
    /// (c) with realistic body needles.
    CountNeedles,
    /// (d)'s drop rule with `[enrich]` adding every attribute it can.
    Drop90Enriched,
}

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub key: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    /// How the sender frames its requests.
    pub framing: Framing,
    /// BPF run-time statistics on during the run (dt_msg's run time is read from them).
    pub bpf_stats: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        key: "a",
        label: "no agent",
        kind: Kind::Direct,
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    Scenario {
        key: "b",
        label: "agent, no rules",
        kind: Kind::Agent(None),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    Scenario {
        key: "c",
        label: "agent, 10 count rules",
        kind: Kind::Agent(Some(RuleSet::Count10)),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    Scenario {
        key: "d",
        label: "agent, drop 90%",
        kind: Kind::Agent(Some(RuleSet::Drop90)),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    Scenario {
        key: "e",
        label: "agent, 64 count rules",
        kind: Kind::Agent(Some(RuleSet::Count64)),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    Scenario {
        key: "f",
        label: "userspace proxy, drop 90%",
        kind: Kind::Proxy,
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    // (d) with every request framed as the Node.js SDK sends it.
    Scenario {
        key: "g",
        label: "agent, drop 90%, chunked",
        kind: Kind::Agent(Some(RuleSet::Drop90)),
        framing: Framing::Chunked,
        bpf_stats: true,
    },
    // (c) with realistic needles (distinct first characters, as operators write them).
    Scenario {
        key: "i",
        label: "agent, 10 count rules, realistic needles",
        kind: Kind::Agent(Some(RuleSet::CountNeedles)),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    // (d) with `[enrich]`: every request's Resources get the sender's attributes.
    Scenario {
        key: "j",
        label: "agent, drop 90%, enrich",
        kind: Kind::Agent(Some(RuleSet::Drop90Enriched)),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    // (d) with the dropped records kept in a flight recorder.
    Scenario {
        key: "h",
        label: "agent, drop 90% into a recorder",
        kind: Kind::Agent(Some(RuleSet::Drop90Recorded)),
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    // The same filtering in a real OpenTelemetry collector, in userspace: what users would run
    // instead of dt (the OpenTelemetry Collector itself can't be fetched on this machine kind).
    Scenario {
        key: "l",
        label: "OTel collector (Rotel), drop 90%",
        kind: Kind::Collector,
        framing: Framing::ContentLength,
        bpf_stats: true,
    },
    // (d) with BPF run-time statistics off: what measuring costs (the agent's `[ceiling]` turns
    // them on; every other agent scenario has them on, for the dt_msg figures).
    Scenario {
        key: "k",
        label: "agent, drop 90%, no bpf_stats",
        kind: Kind::Agent(Some(RuleSet::Drop90)),
        framing: Framing::ContentLength,
        bpf_stats: false,
    },
];

/// The order of a round: the scenarios a ratio compares next to each other where they can be,
/// those of the targets first ((a) by (d) by (f) by (c) by (e), (l) by (a), (g) by (d), (b) by
/// (a)). This host's speed drifts by a third over tens of seconds (another tenant); a ratio of
/// two runs half a round apart carries that drift, one of neighbours barely does.
const PAIRED_ORDER: &[&str] = &["j", "h", "b", "l", "a", "d", "g", "f", "c", "e", "i", "k"];

/// `scenarios` in [`PAIRED_ORDER`] (any scenario it does not name at the end, as given).
pub fn paired_order(scenarios: &[Scenario]) -> Vec<Scenario> {
    let rank = |s: &Scenario| {
        PAIRED_ORDER
            .iter()
            .position(|k| *k == s.key)
            .unwrap_or(PAIRED_ORDER.len())
    };
    let mut v = scenarios.to_vec();
    v.sort_by_key(rank);
    v
}

impl Scenario {
    pub fn by_key(k: &str) -> Option<Scenario> {
        SCENARIOS.iter().copied().find(|s| s.key == k)
    }

    /// Whether the scenario removes 90% of the records on the way.
    pub fn drops(&self) -> bool {
        matches!(
            self.kind,
            Kind::Agent(Some(
                RuleSet::Drop90 | RuleSet::Drop90Recorded | RuleSet::Drop90Enriched
            )) | Kind::Proxy
                | Kind::Collector
        )
    }

    fn records_delivered_per_request(&self, size: usize) -> usize {
        if self.drops() {
            workload::kept_per_request(size)
        } else {
            size
        }
    }
}

/// The figures of one run (one scenario, one size, one round), over its measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub round: usize,
    pub size: usize,
    pub scenario: String,
    pub elapsed_s: f64,
    pub requests_sent: u64,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub sink_requests: u64,
    /// Bytes the sink read (heads and bodies): what crossed the wire into it.
    pub sink_bytes: u64,
    /// Sink requests times the records each holds after filtering (checked by the correctness
    /// step, and by the agent's counters in each run).
    pub records_delivered: u64,
    pub records_per_s_sent: f64,
    pub records_per_s_delivered: f64,
    pub cpu_sender: Cpu,
    pub cpu_sink: Cpu,
    /// `read` calls of the sink over the window (how many pieces the requests arrived in).
    pub sink_read_calls: u64,
    /// TCP segments the machine sent over the window (data and ACKs, every connection).
    pub tcp_out_segs: u64,
    pub cpu_agent: Option<Cpu>,
    pub cpu_proxy: Option<Cpu>,
    /// Sender + sink + agent + proxy, user + system.
    pub cpu_total_s: f64,
    /// cpu_total_s per record sent, in ns.
    pub cpu_ns_per_record: f64,
    /// The whole machine's busy time over the window (everything, other work included).
    pub host_busy_s: f64,
    pub host_softirq_s: f64,
    /// (host_busy_s - cpu_total_s) / elapsed_s: CPUs' worth of work by anything else (other
    /// processes, interrupts, softirq outside the measured processes) during the window.
    pub other_cpus: f64,
    pub agent_peak_rss_kib: Option<u64>,
    pub proxy_peak_rss_kib: Option<u64>,
    /// The agent's BPF programs: run count and run time over the window.
    pub progs: Vec<ProgStats>,
    pub dt_msg_ns_per_run: Option<f64>,
    pub dt_msg_ns_per_record: Option<f64>,
    /// The walk's steps per record walked (`totals.walk_steps / totals.records`, since the
    /// agent started).
    pub steps_per_record: Option<f64>,
    /// The share of the records walked that the walk took whole, its fast path
    /// (`totals.fast_records / totals.records`, since the agent started).
    pub whole_share: Option<f64>,
    /// `dt-agent stats --json` totals at the end of the run (since the agent started).
    pub agent_totals: Option<serde_json::Value>,
    pub proxy_records_in: Option<u64>,
    pub proxy_records_out: Option<u64>,
    /// Anything that makes this run suspect.
    pub notes: Vec<String>,
    /// Wall time of the whole run, process start and stop included.
    pub wall_s: f64,
}

/// One correctness check.
#[derive(Clone, Debug, Serialize)]
pub struct Verified {
    pub size: usize,
    pub scenario: String,
    pub requests: u64,
    pub records_per_request: f64,
    pub ok: bool,
    pub detail: String,
}

/// What is read at both ends of a window.
struct Window {
    host: HostCpu,
    tcp_out_segs: u64,
    sink: Snap,
    proxy: Option<Snap>,
    agent_cpu: Option<Cpu>,
    collector_cpu: Option<Cpu>,
    progs: Vec<ProgStats>,
}

pub struct Bench {
    pub opts: Opts,
    me: PathBuf,
    work: PathBuf,
    rules: Vec<(RuleSet, PathBuf)>,
    empty_rules: PathBuf,
}

impl Bench {
    pub fn new(opts: Opts) -> Result<Bench> {
        let me = std::env::current_exe()?;
        let work = opts
            .out
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&work)?;
        let work = work.canonicalize()?;
        let empty_rules = work.join("rules-b");
        let _ = std::fs::remove_dir_all(&empty_rules);
        std::fs::create_dir_all(&empty_rules)?;
        let mut rules = Vec::new();
        for (set, key, text) in [
            (
                RuleSet::Count10,
                "c",
                workload::rules::count_last_matches(10),
            ),
            (RuleSet::Drop90, "d", workload::rules::drop_90()),
            (
                RuleSet::Drop90Recorded,
                "h",
                workload::rules::drop_90_recorded(),
            ),
            (
                RuleSet::CountNeedles,
                "i",
                workload::rules::count_realistic_needles(),
            ),
            (
                RuleSet::Drop90Enriched,
                "j",
                workload::rules::drop_90_enriched(),
            ),
            (
                RuleSet::Count64,
                "e",
                workload::rules::count_last_matches(64),
            ),
        ] {
            let dir = work.join(format!("rules-{key}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("bench.toml"), text)?;
            let out = Command::new(&opts.agent).arg("check").arg(&dir).output()?;
            if !out.status.success() {
                bail!(
                    "dt-agent check {}: {}{}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            rules.push((set, dir));
        }
        Ok(Bench {
            opts,
            me,
            work,
            rules,
            empty_rules,
        })
    }

    fn rules_dir(&self, set: Option<RuleSet>) -> &Path {
        match set {
            None => &self.empty_rules,
            Some(s) => &self.rules.iter().find(|(k, _)| *k == s).unwrap().1,
        }
    }

    fn me(&self, verb: &str) -> Command {
        let mut c = Command::new(&self.me);
        c.arg(verb);
        c
    }

    fn window(
        &self,
        sink: &mut Server,
        proxy: Option<&mut Server>,
        agent: Option<&Agent>,
        collector: Option<&Collector>,
    ) -> Result<Window> {
        let host = procfs::host_cpu();
        let tcp_out_segs = procfs::tcp_out_segs();
        let sink = sink.snap()?;
        let proxy = match proxy {
            Some(p) => Some(p.snap()?),
            None => None,
        };
        let (agent_cpu, progs) = match agent {
            Some(a) => (procfs::pid_cpu(a.pid()), procfs::bpf_progs(a.pid())),
            None => (None, Vec::new()),
        };
        Ok(Window {
            host,
            tcp_out_segs,
            sink,
            proxy,
            agent_cpu,
            collector_cpu: collector.and_then(|c| procfs::pid_cpu(c.pid())),
            progs,
        })
    }

    /// One run. With `verify`, the sink decodes every request and the run is short.
    pub fn run_one(
        &self,
        size: usize,
        sc: Scenario,
        round: usize,
        verify: bool,
    ) -> Result<(RunResult, Snap)> {
        let t_start = Instant::now();
        let mut sink_cmd = self.me("sink");
        if verify {
            if sc.kind == Kind::Collector {
                // The collector batches records its own way: any number a request.
                sink_cmd.arg("--decode");
            } else {
                sink_cmd
                    .arg("--expect-records")
                    .arg(sc.records_delivered_per_request(size).to_string());
            }
            if sc.drops() {
                sink_cmd.arg("--expect-filtered");
            }
        }
        let mut sink = Server::spawn("sink", sink_cmd)?;
        let mut stats_guard = None;
        let mut agent = None;
        let mut proxy = None;
        let mut collector = None;
        let target = match sc.kind {
            Kind::Direct => sink.port,
            Kind::Agent(set) => {
                if sc.bpf_stats {
                    stats_guard =
                        Some(BpfStatsGuard::enable().context("enable BPF run-time stats")?);
                }
                agent = Some(Agent::start(
                    &self.opts.agent,
                    &self.work,
                    self.rules_dir(set),
                    sink.port,
                    self.opts.max_request,
                )?);
                sink.port
            }
            Kind::Proxy => {
                let mut c = self.me("proxy");
                c.arg("--upstream").arg(format!("127.0.0.1:{}", sink.port));
                let p = Server::spawn("proxy", c)?;
                let port = p.port;
                proxy = Some(p);
                port
            }
            Kind::Collector => {
                let Some(bin) = &self.opts.collector else {
                    bail!("scenario (l) needs --collector");
                };
                let c = Collector::start(bin, &self.work, sink.port)?;
                let port = c.port;
                collector = Some(c);
                port
            }
        };
        let (warmup, duration) = if verify {
            (0.0, 0.4)
        } else {
            (self.opts.warmup, self.opts.duration)
        };
        let mut load = self.me("load");
        load.arg("--addr")
            .arg(format!("127.0.0.1:{target}"))
            .arg("--records")
            .arg(size.to_string())
            .arg("--conns")
            .arg(self.opts.conns.to_string())
            .arg("--warmup")
            .arg(warmup.to_string())
            .arg("--duration")
            .arg(duration.to_string());
        if sc.framing == Framing::Chunked {
            load.arg("--chunked");
        }
        let mut sender = Sender::spawn(load)?;
        sender.wait_go()?;
        let w0 = self.window(
            &mut sink,
            proxy.as_mut(),
            agent.as_ref(),
            collector.as_ref(),
        )?;
        let rep = sender.wait_stop()?;
        let w1 = self.window(
            &mut sink,
            proxy.as_mut(),
            agent.as_ref(),
            collector.as_ref(),
        )?;
        sender.finish()?;

        let mut notes = Vec::new();
        let mut agent_totals = None;
        let mut agent_peak = None;
        let mut agent_stats = None;
        if let Some(a) = agent {
            agent_peak = procfs::peak_rss_kib(Path::new(&format!("/proc/{}", a.pid())));
            let st = a.stats()?;
            agent_totals = st.get("totals").cloned();
            agent_stats = Some(st);
            a.stop()?;
        }
        drop(stats_guard);
        let proxy_end = match proxy {
            Some(mut p) => {
                let s = p.snap()?;
                p.stop()?;
                Some(s)
            }
            None => None,
        };
        let mut collector_peak = None;
        if let Some(c) = collector {
            collector_peak = procfs::peak_rss_kib(Path::new(&format!("/proc/{}", c.pid())));
            if verify {
                // What the collector accepted, it exports on its own time (its batch timeout):
                // wait until every record it should keep has reached the sink.
                let want = rep.records / size as u64 * workload::kept_per_request(size) as u64;
                let deadline = Instant::now() + std::time::Duration::from_secs(15);
                while sink.snap()?.records_in < want && Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            c.stop()?;
        }
        let sink_end = sink.snap()?;
        sink.stop()?;

        let d = |a: &Snap, b: &Snap| Snap {
            requests: b.requests - a.requests,
            bytes_in: b.bytes_in - a.bytes_in,
            bytes_out: b.bytes_out - a.bytes_out,
            records_in: b.records_in - a.records_in,
            records_out: b.records_out - a.records_out,
            bad: b.bad - a.bad,
            chunked: b.chunked - a.chunked,
            errors: b.errors - a.errors,
            cpu: b.cpu.since(&a.cpu),
            peak_rss_kib: b.peak_rss_kib,
            read_calls: b.read_calls - a.read_calls,
        };
        let sink_w = d(&w0.sink, &w1.sink);
        let proxy_w = match (&w0.proxy, &w1.proxy) {
            (Some(a), Some(b)) => Some(d(a, b)),
            _ => None,
        };
        let cpu_agent = match (w0.agent_cpu, w1.agent_cpu) {
            (Some(a), Some(b)) => Some(b.since(&a)),
            _ => None,
        };
        let progs: Vec<ProgStats> = w1
            .progs
            .iter()
            .map(|p1| {
                let p0 = w0.progs.iter().find(|p| p.id == p1.id);
                ProgStats {
                    id: p1.id,
                    prog_type: p1.prog_type,
                    name: match p1.prog_type {
                        16 => "dt_msg".into(),
                        13 => "dt_sockops".into(),
                        2 => "dt_uprobe".into(),
                        t => procfs::prog_type_name(t),
                    },
                    run_cnt: p1.run_cnt - p0.map_or(0, |p| p.run_cnt),
                    run_time_ns: p1.run_time_ns - p0.map_or(0, |p| p.run_time_ns),
                    verified_insns: p1.verified_insns,
                }
            })
            .collect();
        let msg = progs.iter().find(|p| p.prog_type == 16);

        // A collector batches: its requests don't hold a fixed number of records. It keeps
        // exactly the tenth the rule keeps (the correctness step checks that).
        let records_delivered = if sc.kind == Kind::Collector {
            rep.records / size as u64 * workload::kept_per_request(size) as u64
        } else {
            sink_w.requests * sc.records_delivered_per_request(size) as u64
        };
        let cpu_collector = match (w0.collector_cpu, w1.collector_cpu) {
            (Some(a), Some(b)) => Some(b.since(&a)),
            _ => None,
        };
        // The intermediary's CPU: the proxy's, or the collector's.
        let cpu_proxy = proxy_w.map(|p| p.cpu).or(cpu_collector);
        let cpu_total_s = rep.cpu.total()
            + sink_w.cpu.total()
            + cpu_agent.map_or(0.0, |c| c.total())
            + cpu_proxy.map_or(0.0, |c| c.total());
        if rep.errors > 0 || sink_w.errors > 0 {
            notes.push(format!(
                "errors: sender {}, sink {}",
                rep.errors, sink_w.errors
            ));
        }
        if let Some(t) = &agent_totals {
            let pt = unexpected_passthrough(sc, t);
            if pt > 0 {
                notes.push(format!(
                    "{pt} request(s) passed through unfiltered: {}",
                    t["passthrough"]
                ));
            }
        }
        // The sink's window is read a moment after the sender's: allow for that skew. (A
        // collector sends its own batches.)
        if sc.kind != Kind::Collector
            && rep.requests.abs_diff(sink_w.requests)
                > self.opts.conns as u64 * 2 + rep.requests / 100
        {
            notes.push(format!(
                "sender completed {} requests, sink saw {}",
                rep.requests, sink_w.requests
            ));
        }
        let result = RunResult {
            round,
            size,
            scenario: sc.key.into(),
            elapsed_s: rep.elapsed_s,
            requests_sent: rep.requests,
            records_sent: rep.records,
            bytes_sent: rep.bytes,
            sink_requests: sink_w.requests,
            sink_bytes: sink_w.bytes_in,
            records_delivered,
            records_per_s_sent: rep.records as f64 / rep.elapsed_s,
            records_per_s_delivered: records_delivered as f64 / rep.elapsed_s,
            cpu_sender: rep.cpu,
            cpu_sink: sink_w.cpu,
            sink_read_calls: sink_w.read_calls,
            tcp_out_segs: w1.tcp_out_segs - w0.tcp_out_segs,
            cpu_agent,
            cpu_proxy,
            cpu_total_s,
            cpu_ns_per_record: cpu_total_s * 1e9 / rep.records.max(1) as f64,
            host_busy_s: w1.host.busy - w0.host.busy,
            host_softirq_s: w1.host.softirq - w0.host.softirq,
            other_cpus: (w1.host.busy - w0.host.busy - cpu_total_s) / rep.elapsed_s,
            agent_peak_rss_kib: agent_peak,
            proxy_peak_rss_kib: proxy_end.map(|p| p.peak_rss_kib).or(collector_peak),
            dt_msg_ns_per_run: msg
                .filter(|m| m.run_cnt > 0 && sc.bpf_stats)
                .map(|m| m.run_time_ns as f64 / m.run_cnt as f64),
            dt_msg_ns_per_record: msg
                .filter(|_| sc.bpf_stats)
                .map(|m| m.run_time_ns as f64 / rep.records.max(1) as f64),
            steps_per_record: agent_totals.as_ref().and_then(|t| {
                let steps = t["walk_steps"].as_u64()?;
                let records = t["records"].as_u64().filter(|&r| r > 0)?;
                Some(steps as f64 / records as f64)
            }),
            whole_share: agent_totals.as_ref().and_then(|t| {
                let whole = t["fast_records"].as_u64()?;
                let records = t["records"].as_u64().filter(|&r| r > 0)?;
                Some(whole as f64 / records as f64)
            }),
            progs,
            agent_totals,
            proxy_records_in: proxy_w.map(|p| p.records_in),
            proxy_records_out: proxy_w.map(|p| p.records_out),
            notes,
            wall_s: t_start.elapsed().as_secs_f64(),
        };
        if verify {
            self.check_verified(size, sc, &sink_end, agent_stats.as_ref(), rep.records)?;
        }
        Ok((result, sink_end))
    }

    /// The correctness conditions of a verifying run.
    fn check_verified(
        &self,
        size: usize,
        sc: Scenario,
        sink: &Snap,
        stats: Option<&serde_json::Value>,
        records_sent: u64,
    ) -> Result<()> {
        let per = sc.records_delivered_per_request(size) as u64;
        if sink.requests == 0 {
            bail!("no request reached the sink");
        }
        if sc.kind == Kind::Collector {
            // The sender counts the requests answered in its window; a connection's requests
            // answered just before it or still on their way when it closed reached the
            // collector all the same (the same skew the other scenarios allow for).
            let want = records_sent / size as u64 * per;
            let most = want + (self.opts.conns as u64 * 2 + want / per / 100) * per;
            if sink.bad > 0
                || !(want..=most).contains(&sink.records_in)
                || !sink.records_in.is_multiple_of(per)
            {
                bail!(
                    "the collector forwarded {} records in {} requests ({} not as expected), \
                     expected {want} to {most} (whole requests' tenths), all of INFO or above",
                    sink.records_in,
                    sink.requests,
                    sink.bad
                );
            }
            return Ok(());
        }
        if sink.bad > 0 || sink.records_in != sink.requests * per {
            bail!(
                "{} of {} requests did not decode to {per} records{} ({} records in all)",
                sink.bad,
                sink.requests,
                if sc.drops() { " of INFO or above" } else { "" },
                sink.records_in
            );
        }
        // dt rewrites a chunked request's chunk size in place and leaves its framing as it was.
        let want_chunked = if sc.framing == Framing::Chunked {
            sink.requests
        } else {
            0
        };
        if sink.chunked != want_chunked {
            bail!(
                "{} of {} requests arrived chunked with one data chunk, expected {want_chunked}",
                sink.chunked,
                sink.requests
            );
        }
        if let Some(st) = stats {
            let t = &st["totals"];
            if unexpected_passthrough(sc, t) > 0 {
                bail!("requests passed through: {}", t["passthrough"]);
            }
            let records = t["records"].as_u64().unwrap_or(0);
            let dropped = t["records_dropped"].as_u64().unwrap_or(0);
            let expect_dropped = if sc.drops() { records / 10 * 9 } else { 0 };
            if dropped != expect_dropped {
                bail!(
                    "the agent dropped {dropped} of {records} records, expected {expect_dropped}"
                );
            }
            if let Kind::Agent(Some(RuleSet::Count10 | RuleSet::Count64 | RuleSet::CountNeedles)) =
                sc.kind
            {
                let rules = st["rules"].as_array().cloned().unwrap_or_default();
                for r in &rules {
                    let name = r["name"].as_str().unwrap_or("");
                    let matched = r["matched"].as_u64().unwrap_or(0);
                    let want = if name == "count-service" { records } else { 0 };
                    if matched != want {
                        bail!("rule {name} matched {matched} records, expected {want}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Requests the agent passed through untouched for a reason the scenario does not expect. With
/// an empty rule set (b), dt passes every request as `no_rules`, without corking or walking it.
fn unexpected_passthrough(sc: Scenario, totals: &serde_json::Value) -> u64 {
    let expected: &[&str] = match sc.kind {
        Kind::Agent(None) => &["no_rules"],
        _ => &[],
    };
    totals["passthrough"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !expected.contains(&k.as_str()))
                .filter_map(|(_, v)| v.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Machine facts for the report.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_kib: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// `git describe --always --dirty` of the source tree.
    pub git: Option<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default();
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        mem_total_kib,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        git: git_state(),
    }
}

/// Request sizes of the workload, per records-per-request.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    pub records_per_request: usize,
    pub kept_per_request: usize,
    pub mean_request_bytes: f64,
    pub max_request_bytes: usize,
}

/// `git describe --always --dirty` of the working directory, if it is a git checkout.
fn git_state() -> Option<String> {
    let o = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[derive(Serialize)]
struct Output<'a> {
    command: String,
    machine: &'a Machine,
    opts: &'a Opts,
    workload: &'a [WorkloadInfo],
    verify: &'a [Verified],
    runs: &'a [RunResult],
    summary: &'a [report::Summary],
    ratios: &'a [report::Ratio],
    uprobe: &'a uprobe::UprobeResult,
    total_s: f64,
}

pub fn main(opts: Opts) -> Result<()> {
    let t0 = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench attaches dt-agent and must run as root");
    }
    for s in &opts.sizes {
        if *s < 10 || s % 10 != 0 {
            bail!("--sizes: {s} is not a multiple of 10");
        }
    }
    let scenarios: Vec<Scenario> = opts
        .scenarios
        .iter()
        .map(|k| Scenario::by_key(k).with_context(|| format!("--scenarios: no scenario {k:?}")))
        .collect::<Result<_>>()?;
    let scenarios: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|sc| {
            let keep = sc.kind != Kind::Collector || opts.collector.is_some();
            if !keep {
                eprintln!(
                    "dt-bench: scenario (l) left out: no collector binary (--collector; \
                     `cargo xtask bench` installs Rotel from PyPI)"
                );
            }
            keep
        })
        .collect();
    let mut machine = machine();
    eprintln!(
        "dt-bench: {} × {} CPU, kernel {}, load average {}",
        machine.nproc, machine.cpu_model, machine.kernel, machine.loadavg_start
    );
    let workload: Vec<WorkloadInfo> = opts
        .sizes
        .iter()
        .map(|&n| {
            let w = Workload::new(n);
            WorkloadInfo {
                records_per_request: n,
                kept_per_request: workload::kept_per_request(n),
                mean_request_bytes: w.mean_request_bytes(),
                max_request_bytes: w.max_request_bytes(),
            }
        })
        .collect();
    for w in &workload {
        eprintln!(
            "dt-bench: {:>5} records/request: {:.0} bytes on average (largest {}), {:.0} B/record",
            w.records_per_request,
            w.mean_request_bytes,
            w.max_request_bytes,
            w.mean_request_bytes / w.records_per_request as f64
        );
        if w.max_request_bytes > opts.max_request as usize {
            bail!(
                "{}-record requests ({} bytes) exceed --max-request {}",
                w.records_per_request,
                w.max_request_bytes,
                opts.max_request
            );
        }
    }
    let bench = Bench::new(opts.clone())?;

    let mut verified = Vec::new();
    if !opts.no_verify {
        for &size in &opts.sizes {
            for &sc in &scenarios {
                let (r, sink) = bench.run_one(size, sc, 0, true).with_context(|| {
                    format!(
                        "correctness check, {size} records/request, ({}) {}",
                        sc.key, sc.label
                    )
                })?;
                let per = sink.records_in as f64 / sink.requests.max(1) as f64;
                eprintln!(
                    "verify  {size:>5} ({}) {:<26} ok: {} requests decoded, {per} records each{}{}",
                    sc.key,
                    sc.label,
                    sink.requests,
                    if sc.drops() { ", none below INFO" } else { "" },
                    if sc.framing == Framing::Chunked {
                        ", still chunked"
                    } else {
                        ""
                    }
                );
                verified.push(Verified {
                    size,
                    scenario: sc.key.into(),
                    requests: sink.requests,
                    records_per_request: per,
                    ok: true,
                    detail: format!("{} bytes into the sink", r.sink_bytes),
                });
            }
        }
    }

    let total = opts.rounds * opts.sizes.len() * scenarios.len();
    let mut runs = Vec::new();
    let mut i = 0;
    let order = paired_order(&scenarios);
    for round in 1..=opts.rounds {
        for &size in &opts.sizes {
            // The paired order forward in odd rounds and backward in even ones: the scenarios a
            // ratio compares run next to each other, and neither always runs first.
            let n = order.len();
            for k in 0..n {
                let sc = if round % 2 == 1 {
                    order[k]
                } else {
                    order[n - 1 - k]
                };
                i += 1;
                let (r, _) = bench.run_one(size, sc, round, false).with_context(|| {
                    format!(
                        "round {round}, {size} records/request, ({}) {}",
                        sc.key, sc.label
                    )
                })?;
                eprintln!(
                    "[{i:>3}/{total}] round {round} {size:>5} ({}) {:<26} {:>9.0} rec/s sent {:>9.0} delivered {:>6.0} CPU ns/rec{}{}",
                    sc.key,
                    sc.label,
                    r.records_per_s_sent,
                    r.records_per_s_delivered,
                    r.cpu_ns_per_record,
                    r.dt_msg_ns_per_record
                        .map(|v| format!(" (dt_msg {v:.0} ns/rec)"))
                        .unwrap_or_default(),
                    if r.notes.is_empty() {
                        String::new()
                    } else {
                        format!("  NOTE: {}", r.notes.join("; "))
                    }
                );
                runs.push(r);
            }
        }
    }

    let uprobe = if opts.no_uprobe {
        uprobe::UprobeResult::skipped("--no-uprobe")
    } else {
        uprobe::measure(&opts.agent, &bench.work)
    };

    machine.loadavg_end = loadavg();
    let summary = report::summarize(&runs, &opts.sizes, &scenarios);
    let ratios = report::ratios(&runs, &opts.sizes, opts.rounds);
    let total_s = t0.elapsed().as_secs_f64();
    let md = report::markdown(
        &machine, &opts, &workload, &runs, &summary, &ratios, &uprobe, total_s,
    );
    println!("{md}");

    let out = Output {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: &machine,
        opts: &opts,
        workload: &workload,
        verify: &verified,
        runs: &runs,
        summary: &summary,
        ratios: &ratios,
        uprobe: &uprobe,
        total_s,
    };
    std::fs::write(&opts.out, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("write {}", opts.out.display()))?;
    std::fs::write(bench.work.join("results.md"), &md)?;
    eprintln!(
        "dt-bench: raw figures in {}, table in {} ({total_s:.0} s in all)",
        opts.out.display(),
        bench.work.join("results.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_order_names_every_scenario_and_pairs_the_targets() {
        for sc in SCENARIOS {
            assert!(PAIRED_ORDER.contains(&sc.key), "({}) not placed", sc.key);
        }
        let given: Vec<Scenario> = ["a", "c", "d", "e", "f", "i", "l"]
            .iter()
            .map(|k| Scenario::by_key(k).unwrap())
            .collect();
        let keys: Vec<&str> = paired_order(&given).iter().map(|s| s.key).collect();
        assert_eq!(keys, ["l", "a", "d", "f", "c", "e", "i"]);
    }
}
