//! `dt-agent stats [--json]`: the in-kernel counters, from the agent, else from the pinned maps.

use anyhow::Context as _;
use dt_agent::{
    control::{self, CallError, Request},
    kernel,
};

use super::{AgentAt, cannot_reach, locate, print_out, table};

pub fn stats(json: bool, at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let stats = match control::call_within(&socket, &Request::Stats, control::ANSWER_DEADLINE) {
        Ok(r) => r.stats.context("the agent's answer carries no stats")?,
        Err(CallError::NoAgent(_)) if kernel::has_pins(&pins) => {
            // Said on stderr (stdout stays the table or the JSON): the numbers are those of a
            // filter whose agent is not running.
            eprintln!(
                "dt-agent: no agent answers on {}: the counters of the pinned filter under {} \
                 (still filtering with its last rule set, if enabled)",
                socket.display(),
                pins.display()
            );
            kernel::pinned_stats(&pins)?
        }
        Err(e @ (CallError::NoAnswer { .. } | CallError::Starting(_)))
            if kernel::has_pins(&pins) =>
        {
            eprintln!(
                "dt-agent: {e}; read the counters from the pinned maps under {} instead",
                pins.display()
            );
            kernel::pinned_stats_of_running(&pins)?
        }
        Err(e) => return Err(cannot_reach("stats", &socket, &pins, e)),
    };
    let text = if json {
        serde_json::to_string_pretty(&stats)? + "\n"
    } else {
        table::stats(&stats)
    };
    print_out(&text)
}
