//! `dt-agent run`: the flags, merged with the config file into the settings the service runs
//! with.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use dt_agent::{
    service,
    settings::{self, ConfigErrors, Overrides},
};

#[derive(Args)]
pub struct RunArgs {
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
    #[arg(long, value_name = "ADDR", value_parser = settings::parse_metrics_addr)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Push OTLP metrics to this URL (e.g. http://127.0.0.1:4318/v1/metrics).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// How often to push OTLP metrics (e.g. 10s) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
    otlp_interval: Option<Duration>,
    /// Requests (head + body) longer than this pass through untouched, counted `oversize`.
    #[arg(long, value_name = "BYTES", value_parser = settings::parse_max_request)]
    max_request: Option<u32>,
    /// Post captured uprobe calls as OTLP logs to this URL (e.g. http://127.0.0.1:4318/v1/logs).
    #[arg(long, value_name = "URL")]
    capture_endpoint: Option<String>,
}

/// Runs the agent: flags over the config file over the defaults.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = settings::load_optional(args.config.as_deref()).map_err(ConfigErrors)?;
    let flags = Overrides {
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
    };
    let settings = settings::resolve(file, flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    service::run(settings)
}
