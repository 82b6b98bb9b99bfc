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
    let has_headers = settings
        .opamp
        .as_ref()
        .is_some_and(|o| !o.headers.0.is_empty());
    let path = args.config.clone().or_else(|| {
        let default = std::path::Path::new(settings::DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    });
    if has_headers
        && let Some(path) = path
        && let Ok(meta) = std::fs::metadata(&path)
        && let Some(warning) = open_secrets(&path, meta.permissions())
    {
        log::warn!("{warning}");
    }
    service::run(settings)
}

/// A warning when the config file at `path`, which holds `[opamp] headers` (a token, as a
/// rule), can be read by others than its owner.
fn open_secrets(path: &std::path::Path, permissions: std::fs::Permissions) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = permissions.mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: mode {mode:03o}: others than its owner can read it, and it holds [opamp] \
             headers (a token?): `chmod 600` it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_config_file_with_headers_that_others_can_read_is_warned_of() {
        let p = std::path::Path::new("/etc/dt/agent.toml");
        let mode = |m| std::fs::Permissions::from_mode(m);
        assert_eq!(super::open_secrets(p, mode(0o100600)), None);
        assert_eq!(super::open_secrets(p, mode(0o400)), None);
        let w = super::open_secrets(p, mode(0o100644)).unwrap();
        assert!(
            w.starts_with("/etc/dt/agent.toml: mode 644: others than its owner can read it"),
            "{w}"
        );
        assert!(super::open_secrets(p, mode(0o640)).is_some());
    }
}
