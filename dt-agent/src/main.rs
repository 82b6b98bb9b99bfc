//! `dt-agent`: the privileged agent of dt (see INTERFACE.md for the contract).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dt_agent::{
    Agent, AgentConfig, Stats,
    control::{self, Request},
    rules,
};
use dt_ebpf_common::{DEFAULT_MAX_REQUEST, MAX_REQUEST_CEILING};

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
    /// Show the in-kernel counters of the running agent.
    Stats {
        /// The `stats --json` document of INTERFACE.md instead of a table.
        #[arg(long)]
        json: bool,
        /// The agent's control socket.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Rules directory [default: /etc/dt/rules when it exists, else ./rules].
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// OTLP/HTTP port to hook; repeat for several [default: 4318].
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// cgroup v2 directory whose connections are hooked [default: the v2 root].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Control socket [default: /run/dt/agent.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Requests (head + body) longer than this pass through untouched, counted `oversize`.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REQUEST,
          value_parser = clap::value_parser!(u32).range(1..=MAX_REQUEST_CEILING as i64))]
    max_request: u32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Run(args) => run(args),
        Verb::Check { paths } => return check(&paths),
        Verb::Stats { json, socket } => stats(json, socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(errors) = e.downcast_ref::<dt_agent::agent::RuleErrors>() {
                eprintln!("{errors}");
                eprintln!("dt-agent: the rule set was refused; nothing was attached");
            } else {
                eprintln!("dt-agent: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn default_rules_dir() -> PathBuf {
    let etc = Path::new("/etc/dt/rules");
    if etc.is_dir() {
        etc.to_path_buf()
    } else {
        PathBuf::from("rules")
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = AgentConfig {
        rules_dir: args.rules.unwrap_or_else(default_rules_dir),
        ports: if args.ports.is_empty() {
            vec![4318]
        } else {
            args.ports
        },
        cgroup: args.cgroup,
        max_request: args.max_request,
    };
    let socket = control::socket_path(args.socket);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Bind first: a second agent on the same socket fails before attaching anything.
        let listener = control::bind(&socket)?;
        let agent = match Agent::start(cfg.clone()) {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        };
        log::info!(
            "dt-agent running: rules {}, control socket {}",
            cfg.rules_dir.display(),
            socket.display()
        );
        let agent = Arc::new(Mutex::new(agent));
        let server = tokio::spawn(control::serve(listener, agent.clone()));
        wait_for_signal().await?;
        log::info!("stopping: passing everything through, draining, detaching");
        server.abort();
        let _ = std::fs::remove_file(&socket);
        // Dropping the last reference drains and detaches.
        drop(agent);
        Ok(())
    })
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

fn stats(json: bool, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = control::socket_path(socket);
    let response = control::call(&socket, &Request::Stats)?;
    let stats = response
        .stats
        .context("the agent's answer carries no stats")?;
    let text = if json {
        serde_json::to_string_pretty(&stats)? + "\n"
    } else {
        stats_table(&stats)
    };
    print_out(&text)
}

/// Writes to stdout; a closed pipe (`stats | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn stats_table(s: &Stats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
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
        "\n{:<32} {:<10} {:<6} {:>12} {:>12} {:>12} {:>14}",
        "RULE", "ACTION", "HOOK", "MATCHED", "KEPT", "DROPPED", "DROPPED BYTES"
    );
    for r in &s.rules {
        let name = if r.active {
            r.name.clone()
        } else {
            format!("{} (removed)", r.name)
        };
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:<6} {:>12} {:>12} {:>12} {:>14}",
            name, r.action, r.hook, r.matched, r.kept, r.dropped, r.dropped_bytes
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
    out
}
