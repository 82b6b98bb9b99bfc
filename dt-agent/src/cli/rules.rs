//! `dt-agent rules [--json]`: the active rules, the generation, and where each rule is written.

use anyhow::Context as _;
use dt_agent::control::{self, Request};

use super::{AgentAt, cannot_reach, locate, print_out, table};

pub fn rules(json: bool, at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let info = control::call_within(&socket, &Request::Rules, control::ANSWER_DEADLINE)
        .map_err(|e| cannot_reach("rules", &socket, &pins, e))?
        .rules
        .context("the agent's answer carries no rules")?;
    let text = if json {
        serde_json::to_string_pretty(&info)? + "\n"
    } else {
        table::rules(&info)
    };
    print_out(&text)
}
