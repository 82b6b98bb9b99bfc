//! `dt-agent uninstall`: asks the agent to detach everything and remove every pin, following it
//! while it waits for held requests.

use dt_agent::{
    control::{self, CallError, Request},
    drain, kernel,
};

use super::{AgentAt, cannot_reach, locate};

pub fn uninstall(now: bool, at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    if now {
        let status = match control::call_within(
            &socket,
            &Request::UninstallNow,
            control::UNINSTALL_DEADLINE,
        ) {
            Ok(r) => r.uninstall.unwrap_or_default(),
            Err(e) => return Err(cannot_reach("uninstall", &socket, &pins, e)),
        };
        if status.waiting.in_flight > 0 {
            println!("detached at once (--now); lost: {}", status.waiting);
        }
        println!("uninstalled: every program detached and every pin removed");
        return Ok(());
    }
    // The agent answers at once: done, or what it waits for (requests held in the kernel, which
    // would be lost if it detached now). Ask again until it is done; the held requests complete
    // meanwhile, and every request that is not held yet passes untouched.
    let mut said = String::new();
    let mut said_at = std::time::Instant::now();
    loop {
        let status =
            match control::call_within(&socket, &Request::Uninstall, control::UNINSTALL_DEADLINE) {
                Ok(r) => r.uninstall.unwrap_or_default(),
                // It finished and stopped between two questions (or while answering one: a
                // question that reaches it as it exits finds the connection closed).
                Err(CallError::NoAgent(_) | CallError::Other(_))
                    if !said.is_empty() && !kernel::has_pins(&pins) =>
                {
                    break;
                }
                Err(e) => return Err(cannot_reach("uninstall", &socket, &pins, e)),
            };
        if status.done {
            // Only to an `uninstall` that waited, and when something was held.
            if let Some(lost) = status
                .cut_short
                .filter(|l| !said.is_empty() && !l.is_empty())
            {
                println!(
                    "the wait was cut short by `dt-agent uninstall --now`: detached at once; \
                     lost: {lost}"
                );
            }
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
            println!(
                "uninstall: every request passes now; waiting until no request is held \
                 (`dt-agent uninstall --now` stops waiting: the held requests are then lost)"
            );
        }
        if now != said || said_at.elapsed() >= drain::LOG_EVERY {
            println!("waiting for: {}", status.waiting);
            said = now;
            said_at = std::time::Instant::now();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    println!("uninstalled: every program detached and every pin removed");
    Ok(())
}
