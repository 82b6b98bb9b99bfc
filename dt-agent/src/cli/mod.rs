//! The verbs of `dt-agent`, one file each, and what they share: where the agent is
//! ([`AgentAt`]), why it cannot be reached, writing to stdout, and reporting errors. [`table`]
//! renders the tables.

pub mod check;
pub mod dynamic;
pub mod push;
pub mod ripcord;
pub mod rules;
pub mod run;
pub mod stats;
pub mod table;
pub mod uninstall;

use std::path::{Path, PathBuf};

use clap::Args;
use dt_agent::{
    control::CallError,
    ripcord as cord,
    rules::RuleErrors,
    settings::{self, ConfigErrors, SettingsErrors},
};

/// Where the verbs find the agent, and its pinned state.
#[derive(Args)]
pub struct AgentAt {
    /// The agent's control socket [default: the config's, else /run/dt/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The agent's config file, for its socket and pin directory [default: /etc/dt/agent.toml
    /// when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where pinned state lives [default: the config's, else /sys/fs/bpf/dt].
    #[arg(long, value_name = "PATH")]
    pub pin_dir: Option<PathBuf>,
}

/// The socket and pin root a verb uses: flags, else the config file's, else the defaults. The
/// file is not read when both flags are given; a file with problems (mid-edit, say) is only
/// warned of, and its `socket` and `pin_dir` are still used: the rip cord must always work.
pub fn locate(at: &AgentAt) -> anyhow::Result<(PathBuf, PathBuf)> {
    if at.socket.is_none() || at.pin_dir.is_none() {
        let settings::Locations {
            socket,
            pin_dir,
            problems,
        } = settings::locations_optional(at.config.as_deref()).map_err(ConfigErrors)?;
        if !problems.is_empty() {
            eprintln!(
                "dt-agent: warning: the config file has problems (the agent would refuse it at \
                 its next start); its socket and pin_dir are used as written:\n{}",
                ConfigErrors(problems)
            );
        }
        let file = settings::Layer {
            socket,
            pin_dir,
            ..settings::Layer::default()
        };
        return Ok(settings::locate(
            at.socket.clone(),
            at.pin_dir.clone(),
            Some(&file),
        ));
    }
    Ok(settings::locate(
        at.socket.clone(),
        at.pin_dir.clone(),
        None,
    ))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Says plainly why `verb` cannot reach the agent, and what to do; for the errors that have no
/// fallback left.
pub fn cannot_reach(verb: &str, socket: &Path, pins: &Path, e: CallError) -> anyhow::Error {
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
        CallError::NoAgent(_) if verb == "uninstall" && dt_agent::kernel::has_pins(pins) => {
            anyhow::anyhow!(
                "no agent is running (nothing answers on {}): `dt-agent uninstall` needs a \
                 running agent, which waits for requests held in the kernel before it detaches. \
                 Start it (`dt-agent run --pin`, or `systemctl start dt-agent`) and uninstall \
                 again; or, if it cannot start, remove the pinned filter under {} by hand \
                 (`rm -r {}`: its programs detach at once, and a request held at that moment \
                 is lost)",
                socket.display(),
                pins.display(),
                pins.display()
            )
        }
        CallError::NoAgent(_) => anyhow::anyhow!(
            "no agent is running (nothing answers on {}): `dt-agent {verb}` needs a running \
             agent. Start it (`dt-agent run`, or `systemctl start dt-agent`), or give --socket \
             or --config if it uses another path",
            socket.display()
        ),
        CallError::NoAnswer { pid, waited } => {
            let pid = pid.or_else(|| cord::listener_pid(socket));
            anyhow::anyhow!(
                "{}. {}`dt-agent {verb}` needs an agent that answers{}: resume it ({}) or \
                 restart it; `dt-agent disable` works on a hung agent",
                CallError::NoAnswer { pid, waited },
                // The agent took the request and may still carry it out: say so.
                match verb {
                    "push" =>
                        "The push may still be applied once the agent gets to it \
                               (`dt-agent rules` shows the active generation and files). ",
                    "flush" => "The flush may still be under way. ",
                    "uninstall" => "The uninstall may still be under way. ",
                    _ => "",
                },
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

/// Writes to stdout; a closed pipe (`stats | head`) is not an error.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Says on stderr why a verb failed: every problem of a refused rule set or config file, the
/// agent's own words when it refused, else the error chain.
pub fn report(e: &anyhow::Error) {
    if let Some(errors) = e.downcast_ref::<RuleErrors>() {
        eprintln!("{errors}");
        eprintln!("dt-agent: the rule set was refused; nothing was changed");
    } else if let Some(errors) = e.downcast_ref::<ConfigErrors>() {
        eprintln!("{errors}");
        match errors.file() {
            Some(file) => eprintln!("dt-agent: the config file {} is invalid", file.display()),
            None => eprintln!("dt-agent: the config file is invalid"),
        }
    } else if let Some(errors) = e.downcast_ref::<SettingsErrors>() {
        eprintln!("{errors}");
        eprintln!("dt-agent: the settings were refused; the agent did not start");
    } else if let Some(CallError::Refused(message) | CallError::Starting(message)) =
        e.downcast_ref::<CallError>()
    {
        eprintln!("{message}");
    } else {
        eprintln!("dt-agent: {e:#}");
    }
}
