//! `dt-agent disable` / `enable`: the rip cord, through the agent, else on its kernel state
//! directly (a hung agent), else on the pinned state (no agent).

use anyhow::{Context as _, bail};
use dt_agent::{
    control::{self, CallError, Request},
    kernel,
    ripcord::{self, Pulled},
};

use super::{AgentAt, cannot_reach, euid, locate};

pub fn set_enabled(enabled: bool, at: &AgentAt) -> anyhow::Result<()> {
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
    match control::call_within(&socket, &request, control::ANSWER_DEADLINE) {
        Ok(r) if r.note.is_some() => {
            // Said by an agent that is still starting: what it did, and what it will do.
            println!("{}", r.note.unwrap_or_default());
            return Ok(());
        }
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
        Err(CallError::NoAgent(_)) if kernel::has_pins(&pins) => {
            kernel::pinned_set_enabled(&pins, enabled)?;
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
