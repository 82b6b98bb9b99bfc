//! `dt-agent run`: the flags, merged with the config file into the settings the service runs
//! with.

use std::path::PathBuf;

use clap::Args;
use dt_agent::{
    service,
    settings::{self, ConfigErrors, Layer, SettingsErrors},
};

/// `dt-agent run`'s flags: the settings ones ([`Layer`]), the config file and pinning.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    flags: Layer,
    /// Config file [default: /etc/dt/agent.toml when it exists].
    #[arg(long, value_name = "FILE", display_order = 2)]
    config: Option<PathBuf>,
    /// Pin maps and links so filtering outlives the agent, and adopt pinned state at start.
    #[arg(long, overrides_with = "no_pin", display_order = 6)]
    pin: bool,
    /// Don't pin (overrides `pin = true` in the config).
    #[arg(long, overrides_with = "pin", display_order = 7)]
    no_pin: bool,
}

/// Runs the agent: flags over the config file over the defaults.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = settings::load_optional(args.config.as_deref()).map_err(ConfigErrors)?;
    let flags = Layer {
        pin: if args.pin {
            Some(true)
        } else if args.no_pin {
            Some(false)
        } else {
            None
        },
        ..args.flags
    };
    let settings = settings::resolve(file, flags).map_err(SettingsErrors)?;
    service::run(settings)
}
