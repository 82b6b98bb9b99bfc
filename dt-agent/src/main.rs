//! `dt-agent`: the privileged agent of dt (see INTERFACE.md for the contract).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use dt_agent::{
    Agent, AgentConfig, Stats,
    agent::{self, RuleErrors},
    config::{self, Overrides},
    control::{self, CallError, PushedFile, Request, RulesInfo},
    daemon::Daemon,
    metrics,
    ripcord::{self, Pulled},
    rules,
};
use dt_ebpf_common::MAX_REQUEST_CEILING;

#[derive(Parser)]
#[command(
    name = "dt-agent",
    version,
    about = "dt: filter OpenTelemetry logs in the kernel"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Load and attach the kernel programs, compile the rules, and serve until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Validate rule files (no kernel, no root): exit 0 when valid, else 1 with
    /// `file:line:column: message` for each problem.
    Check {
        /// Rule files, or directories whose *.toml files are checked.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Install rule files into the running agent's rules directory, as one new generation.
    /// The whole resulting set is validated first; on any error nothing is written.
    Push {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Show the in-kernel counters (from the pinned maps when no agent is running).
    Stats {
        /// The `stats --json` document of INTERFACE.md instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// List the active rules, the generation, and each rule's source file.
    Rules {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// The rip cord: every request passes untouched, at once (works on the pinned state when no
    /// agent is running).
    Disable {
        #[command(flatten)]
        at: AgentAt,
    },
    /// Evaluate the rules again after `disable`.
    Enable {
        #[command(flatten)]
        at: AgentAt,
    },
    /// Detach everything and remove every pin; the agent then exits.
    Uninstall {
        #[command(flatten)]
        at: AgentAt,
    },
}

/// Where the verbs find the agent, and its pinned state.
#[derive(Args)]
struct AgentAt {
    /// The agent's control socket [default: the config's, else /run/dt/agent.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The agent's config file, for its socket and pin directory [default: /etc/dt/agent.toml
    /// when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where pinned state lives [default: the config's, else /sys/fs/bpf/dt].
    #[arg(long, value_name = "PATH")]
    pin_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Rules directory [default: /etc/dt/rules when it exists, else ./rules].
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Config file [default: /etc/dt/agent.toml when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// OTLP/HTTP port to hook; repeat for several [default: 4318].
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// cgroup v2 directory whose connections are hooked [default: the v2 root].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Control socket [default: /run/dt/agent.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Pin maps and links so filtering outlives the agent, and adopt pinned state at start.
    #[arg(long, overrides_with = "no_pin")]
    pin: bool,
    /// Don't pin (overrides `pin = true` in the config).
    #[arg(long, overrides_with = "pin")]
    no_pin: bool,
    /// Where pins go [default: /sys/fs/bpf/dt].
    #[arg(long, value_name = "PATH")]
    pin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR", value_parser = config::parse_metrics_addr)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Push OTLP metrics to this URL (e.g. http://127.0.0.1:4318/v1/metrics).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// How often to push OTLP metrics (e.g. 10s) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    otlp_interval: Option<Duration>,
    /// Requests (head + body) longer than this pass through untouched, counted `oversize`.
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=MAX_REQUEST_CEILING as i64))]
    max_request: Option<u32>,
    /// Post captured uprobe calls as OTLP logs to this URL (e.g. http://127.0.0.1:4318/v1/logs).
    #[arg(long, value_name = "URL")]
    capture_endpoint: Option<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Run(args) => run(args),
        Verb::Check { paths } => return check(&paths),
        Verb::Push { paths, at } => push(&paths, &at),
        Verb::Stats { json, at } => stats(json, &at),
        Verb::Rules { json, at } => rules_verb(json, &at),
        Verb::Disable { at } => set_enabled(false, &at),
        Verb::Enable { at } => set_enabled(true, &at),
        Verb::Uninstall { at } => uninstall(&at),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(errors) = e.downcast_ref::<RuleErrors>() {
                eprintln!("{errors}");
                eprintln!("dt-agent: the rule set was refused; nothing was changed");
            } else if let Some(CallError::Refused(message)) = e.downcast_ref::<CallError>() {
                eprintln!("{message}");
            } else {
                eprintln!("dt-agent: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = config::load_optional(args.config.as_deref()).map_err(RuleErrors)?;
    let settings = config::resolve(
        file,
        Overrides {
            rules_dir: args.rules,
            ports: args.ports,
            cgroup: args.cgroup,
            socket: args.socket,
            pin: if args.pin {
                Some(true)
            } else if args.no_pin {
                Some(false)
            } else {
                None
            },
            pin_dir: args.pin_dir,
            metrics_addr: args.metrics_addr,
            otlp_endpoint: args.otlp_endpoint,
            otlp_interval: args.otlp_interval,
            max_request: args.max_request,
            capture_endpoint: args.capture_endpoint,
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = AgentConfig {
        rules_dir: settings.rules_dir.clone(),
        ports: settings.ports.clone(),
        cgroup: settings.cgroup.clone(),
        max_request: settings.max_request,
        pin_root: settings.pin.then(|| settings.pin_dir.clone()),
        capture_endpoint: settings.capture_endpoint.clone(),
    };
    let start_unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let socket = settings.socket.clone();
    let result = runtime.block_on(async move {
        // Bind first: a second agent on the same socket fails before attaching anything.
        let listener = control::bind(&socket)?;
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => Some(metrics::bind_metrics(addr)?),
            None => None,
        };
        let agent = Agent::start(cfg.clone())?;
        let daemon = Daemon::new(agent, cfg.rules_dir.clone())?;
        let _watcher = daemon.watch()?;
        log::info!(
            "dt-agent running: rules {} (watched), control socket {}",
            cfg.rules_dir.display(),
            socket.display()
        );
        let mut tasks = vec![tokio::spawn(control::serve(listener, daemon.clone()))];
        let source: metrics::StatsSource = {
            let daemon = daemon.clone();
            Arc::new(move || daemon.stats())
        };
        if let Some(listener) = metrics_listener {
            log::info!(
                "Prometheus metrics on http://{}/metrics",
                listener.local_addr()?
            );
            tasks.push(tokio::spawn(metrics::serve_prometheus(
                listener,
                source.clone(),
            )));
        }
        if let Some(endpoint) = &settings.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .with_context(|| format!("otlp_endpoint {endpoint:?}"))?;
            log::info!(
                "pushing OTLP metrics to {endpoint} every {:?}",
                settings.otlp_interval
            );
            tasks.push(tokio::spawn(metrics::push_otlp(
                uri,
                settings.otlp_interval,
                start_unix_nanos,
                source,
            )));
        }
        tokio::select! {
            r = wait_for_signal() => r?,
            _ = daemon.shutdown.notified() => {}
        }
        // Held requests are waited for (no deadline) while the control socket still answers;
        // a second signal stops the wait.
        daemon
            .drain_before_exit(async {
                let _ = wait_for_signal().await;
            })
            .await;
        for t in &tasks {
            t.abort();
        }
        // Dropping the agent detaches, or leaves the pins.
        drop(daemon.take_agent());
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&settings.socket);
    result
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Expands directories into their `*.toml` files (in name order).
fn rule_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let files = rule_files(paths);
    match rules::check_files(&files) {
        Ok(defs) => {
            println!("ok: {} rules in {} files", defs.len(), files.len());
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The socket and pin root a verb uses: flags, else the config file's, else the defaults.
fn locate(at: &AgentAt) -> anyhow::Result<(PathBuf, PathBuf)> {
    let file = config::load_optional(at.config.as_deref()).map_err(RuleErrors)?;
    let socket = at
        .socket
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.socket.clone()))
        .unwrap_or_else(|| PathBuf::from(control::DEFAULT_SOCKET));
    let pins = at
        .pin_dir
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.pin_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(agent::DEFAULT_PIN_ROOT));
    Ok((socket, pins))
}

/// Calls the agent, waiting at most `deadline`; the caller falls back (or explains) on errors.
fn call(
    socket: &Path,
    request: &Request,
    deadline: Duration,
) -> Result<control::Response, CallError> {
    control::call_within(socket, request, deadline)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Says plainly why `verb` cannot reach the agent, and what to do; for the errors that have no
/// fallback left.
fn cannot_reach(verb: &str, socket: &Path, pins: &Path, e: CallError) -> anyhow::Error {
    let uid = euid();
    match e {
        // Non-root: the socket is root's (0600), and so are the pins; say so rather than
        // guess whether an agent runs.
        CallError::Denied(_) | CallError::NoAgent(_) if uid != 0 => anyhow::anyhow!(
            "permission denied: `dt-agent {verb}` needs root (you are uid {uid}): dt's control \
             socket {} and its pinned state are root's. Run it as root, e.g. `sudo dt-agent {verb}`",
            socket.display()
        ),
        CallError::Denied(e) => e,
        // stats, enable and disable come here only when nothing is pinned either.
        CallError::NoAgent(_) if matches!(verb, "stats" | "enable" | "disable") => anyhow::anyhow!(
            "no agent is running (nothing answers on {}) and nothing is pinned under {}: {}. \
             Start the agent (`dt-agent run`, or `systemctl start dt-agent`), or give --socket, \
             --pin-dir or --config if it uses other paths",
            socket.display(),
            pins.display(),
            if verb == "stats" {
                "there are no counters to show".to_string()
            } else {
                format!("there is nothing to {verb}")
            }
        ),
        CallError::NoAgent(_) => anyhow::anyhow!(
            "no agent is running (nothing answers on {}): `dt-agent {verb}` needs a running \
             agent. Start it (`dt-agent run`, or `systemctl start dt-agent`), or give --socket \
             or --config if it uses another path",
            socket.display()
        ),
        CallError::NoAnswer { pid, waited } => {
            let pid = pid.or_else(|| ripcord::listener_pid(socket));
            anyhow::anyhow!(
                "{}. `dt-agent {verb}` needs an agent that answers{}: resume it ({}) or restart \
                 it; `dt-agent disable` works on a hung agent",
                CallError::NoAnswer { pid, waited },
                if verb == "stats" {
                    format!(
                        " or pinned maps (nothing is pinned under {})",
                        pins.display()
                    )
                } else {
                    String::new()
                },
                match pid {
                    Some(pid) => format!("`kill -CONT {pid}`"),
                    None => "`kill -CONT PID`".to_string(),
                }
            )
        }
        e => e.into(),
    }
}

fn push(paths: &[PathBuf], at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let mut files = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
        files.push(PushedFile {
            path: p.clone(),
            text,
        });
    }
    let response = call(&socket, &Request::Push { files }, control::PUSH_DEADLINE)
        .map_err(|e| cannot_reach("push", &socket, &pins, e))?;
    println!(
        "pushed {} file(s): generation {}",
        paths.len(),
        response.generation.unwrap_or_default()
    );
    Ok(())
}

fn stats(json: bool, at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let stats = match call(&socket, &Request::Stats, control::ANSWER_DEADLINE) {
        Ok(r) => r.stats.context("the agent's answer carries no stats")?,
        Err(CallError::NoAgent(e)) if agent::has_pins(&pins) => {
            log::debug!("{e:#}; reading the pinned maps");
            agent::pinned_stats(&pins)?
        }
        Err(e @ CallError::NoAnswer { .. }) if agent::has_pins(&pins) => {
            eprintln!(
                "dt-agent: {e}; read the counters from the pinned maps under {} instead",
                pins.display()
            );
            agent::pinned_stats(&pins)?
        }
        Err(e) => return Err(cannot_reach("stats", &socket, &pins, e)),
    };
    let text = if json {
        serde_json::to_string_pretty(&stats)? + "\n"
    } else {
        stats_table(&stats)
    };
    print_out(&text)
}

fn rules_verb(json: bool, at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let info = call(&socket, &Request::Rules, control::ANSWER_DEADLINE)
        .map_err(|e| cannot_reach("rules", &socket, &pins, e))?
        .rules
        .context("the agent's answer carries no rules")?;
    let text = if json {
        serde_json::to_string_pretty(&info)? + "\n"
    } else {
        rules_table(&info)
    };
    print_out(&text)
}

fn set_enabled(enabled: bool, at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let (request, verb) = if enabled {
        (Request::Enable, "enable")
    } else {
        (Request::Disable, "disable")
    };
    let outcome = if enabled {
        "rules are evaluated again"
    } else {
        "every request now passes untouched"
    };
    match call(&socket, &request, control::ANSWER_DEADLINE) {
        Ok(_) => {}
        Err(CallError::NoAnswer { pid, waited }) => {
            // The agent is hung: set the switch in the kernel without it.
            let pid = pid.or_else(|| ripcord::listener_pid(&socket));
            let e = CallError::NoAnswer { pid, waited };
            let what = if enabled {
                "re-armed the rules"
            } else {
                "pulled the rip cord"
            };
            match ripcord::pull_for_hung_agent(pid, &pins, enabled)
                .with_context(|| format!("{e}, and dt-agent could not {verb} without it"))?
            {
                Pulled::Maps(ids) => println!(
                    "dt-agent: {e}; {what} directly on its kernel state (control map id {}): \
                     {outcome}",
                    ids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Pulled::Pins => println!(
                    "dt-agent: {e}; {what} directly on the pinned state under {}: {outcome}",
                    pins.display()
                ),
            }
        }
        Err(CallError::NoAgent(_)) if agent::has_pins(&pins) => {
            agent::pinned_set_enabled(&pins, enabled)?;
            println!(
                "no agent is running: set on the pinned state under {}",
                pins.display()
            );
        }
        Err(CallError::NoAgent(_)) if !enabled && euid() == 0 => {
            // No agent and no pins: nothing of this agent is in the kernel, so nothing filters,
            // unless an agent of other paths is loaded.
            let loaded = ripcord::loaded_control_maps()?;
            if !loaded.is_empty() {
                let holders = ripcord::holders_of(&loaded);
                let list = |ids: &[u32]| {
                    let s = if ids.len() > 1 { "s" } else { "" };
                    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                    format!("{s} {}", ids.join(", "))
                };
                bail!(
                    "no agent answers on {} and nothing is pinned under {}, but dt is loaded in \
                     the kernel by another agent (control map id{}, {}): give that agent's \
                     --socket, --pin-dir or --config",
                    socket.display(),
                    pins.display(),
                    list(&loaded),
                    if holders.is_empty() {
                        "pinned elsewhere".to_string()
                    } else {
                        format!("held by pid{}", list(&holders))
                    }
                );
            }
            println!(
                "no agent is running and nothing of dt is in the kernel (nothing answers on {}, \
                 nothing is pinned under {}): nothing filters",
                socket.display(),
                pins.display()
            );
        }
        Err(e) => return Err(cannot_reach(verb, &socket, &pins, e)),
    }
    println!(
        "{}",
        if enabled {
            "enabled: rules are evaluated"
        } else {
            "disabled: every request passes untouched"
        }
    );
    Ok(())
}

fn uninstall(at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    // The agent answers at once: done, or what it waits for (requests held in the kernel, which
    // would be lost if it detached now). Ask again until it is done; the held requests complete
    // meanwhile, and every request that is not held yet passes untouched.
    let mut said = String::new();
    let mut said_at = std::time::Instant::now();
    loop {
        let status = match call(&socket, &Request::Uninstall, control::UNINSTALL_DEADLINE) {
            Ok(r) => r.uninstall.unwrap_or_default(),
            // It finished and stopped between two questions.
            Err(CallError::NoAgent(_)) if !said.is_empty() && !agent::has_pins(&pins) => break,
            Err(e) => return Err(cannot_reach("uninstall", &socket, &pins, e)),
        };
        if status.done {
            break;
        }
        // Say it again when who holds changes, else every few seconds.
        let who: Vec<_> = status
            .waiting
            .held
            .iter()
            .map(|h| (h.pid, h.local_port))
            .collect();
        let now = format!("{} {who:?}", status.waiting.in_flight);
        if said.is_empty() {
            println!("uninstall: every request passes now; waiting until no request is held");
        }
        if now != said || said_at.elapsed() >= dt_agent::drain::LOG_EVERY {
            println!("waiting for: {}", status.waiting);
            said = now;
            said_at = std::time::Instant::now();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!("uninstalled: every program detached and every pin removed; the agent is stopping");
    Ok(())
}

/// Writes to stdout; a closed pipe (`stats | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn rules_table(info: &RulesInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // The HOOK column fits "uprobe:NAME" hooks.
    let hw = info
        .rules
        .iter()
        .map(|r| r.hook.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        out,
        "generation {}  {}  rules from {}",
        info.generation,
        if info.enabled {
            "enabled"
        } else {
            "DISABLED (everything passes)"
        },
        info.rules_dir.display()
    );
    let _ = writeln!(
        out,
        "\n{:<32} {:<10} {:<hw$} SOURCE",
        "RULE", "ACTION", "HOOK"
    );
    for r in &info.rules {
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:<hw$} {}:{}",
            r.name,
            r.action,
            r.hook,
            r.file.display(),
            r.line
        );
    }
    out
}

fn stats_table(s: &Stats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // The HOOK column fits "uprobe:NAME" hooks.
    let hw = s
        .rules
        .iter()
        .map(|r| r.hook.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        out,
        "generation {}  {}",
        s.generation,
        if s.enabled {
            "enabled"
        } else {
            "DISABLED (everything passes)"
        }
    );
    let _ = writeln!(
        out,
        "\n{:<32} {:<10} {:<hw$} {:>12} {:>12} {:>12} {:>14} {:>10}",
        "RULE", "ACTION", "HOOK", "MATCHED", "KEPT", "DROPPED", "DROPPED BYTES", "REDACTED"
    );
    for r in &s.rules {
        let name = if r.active {
            r.name.clone()
        } else {
            format!("{} (removed)", r.name)
        };
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:<hw$} {:>12} {:>12} {:>12} {:>14} {:>10}",
            name, r.action, r.hook, r.matched, r.kept, r.dropped, r.dropped_bytes, r.redacted
        );
    }
    let t = &s.totals;
    let _ = writeln!(
        out,
        "\nrequests {}  log requests {}  records {}  dropped {}  bytes in {}  bytes out {}",
        t.requests, t.log_requests, t.records, t.records_dropped, t.bytes_in, t.bytes_out
    );
    let passed: Vec<String> = t
        .passthrough
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "passed through untouched: {}",
        if passed.is_empty() {
            "none".to_string()
        } else {
            passed.join(", ")
        }
    );
    // uprobe hook
    let u = &s.uprobes;
    if u.attached > 0 || u.calls > 0 {
        let _ = writeln!(
            out,
            "uprobes: {} functions attached  calls {}  nested {}  captured {}  capture lost {}  \
             exported {}  export failed {}  messages unreadable {}  truncated {}",
            u.attached,
            u.calls,
            u.nested,
            u.captured,
            u.capture_lost,
            u.exported,
            u.export_failed,
            u.unreadable,
            u.truncated
        );
    }
    out
}
