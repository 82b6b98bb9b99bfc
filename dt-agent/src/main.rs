//! `dt-agent`: the privileged agent of dt (the README's "Command line" is its contract). This
//! file parses the command line and hands each verb to its file under `cli/`.

mod cli;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use cli::{AgentAt, run::RunArgs};

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
    Run(Box<RunArgs>),
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
        /// Rule files, or directories whose *.toml files are pushed.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Show the in-kernel counters (from the pinned maps when no agent is running).
    Stats {
        /// The `stats --json` document (see the README) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// List the active rules, the generation, and each rule's source file.
    Rules {
        /// The active rules as JSON (see the README) instead of a table.
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
        /// Don't wait for requests held in the kernel (a sender that never finishes its request
        /// holds one for ever): detach at once; the held requests are lost.
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Egress flight recorders now: their records go to the capture endpoint and leave them.
    Flush {
        /// Recorder names.
        #[arg(required = true)]
        recorders: Vec<String>,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Turn a state on or off by hand: `state NAME on [--for 5m]`, `state NAME off`.
    State {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        switch: String,
        /// How long it stays on [default: the state's duration].
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        #[command(flatten)]
        at: AgentAt,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Run(args) => cli::run::run(*args),
        Verb::Check { paths } => return cli::check::check(&paths),
        Verb::Push { paths, at } => cli::push::push(&paths, &at),
        Verb::Stats { json, at } => cli::stats::stats(json, &at),
        Verb::Rules { json, at } => cli::rules::rules(json, &at),
        Verb::Disable { at } => cli::ripcord::set_enabled(false, &at),
        Verb::Enable { at } => cli::ripcord::set_enabled(true, &at),
        Verb::Uninstall { now, at } => cli::uninstall::uninstall(now, &at),
        Verb::Flush { recorders, at } => cli::dynamic::flush(&recorders, &at),
        Verb::State {
            name,
            switch,
            for_,
            at,
        } => cli::dynamic::state(&name, switch == "on", for_.as_deref(), &at),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::report(&e);
            ExitCode::FAILURE
        }
    }
}
