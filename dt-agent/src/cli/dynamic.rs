//! `dt-agent flush NAME...` and `dt-agent state NAME on [--for D] | off`: flight recorders and
//! states by hand.

use anyhow::{Context as _, bail};
use dt_agent::{
    control::{self, CallError, Request},
    export::flush::FLUSH_WAIT,
    kernel,
    rules::{MAX_STATE_DURATION, MIN_STATE_DURATION, parse_duration},
};

use super::{AgentAt, cannot_reach, euid, locate};

pub fn flush(recorders: &[String], at: &AgentAt) -> anyhow::Result<()> {
    let (socket, pins) = locate(at)?;
    let request = Request::Flush {
        recorders: recorders.to_vec(),
    };
    let flushed = control::call_within(&socket, &request, FLUSH_WAIT + control::ANSWER_DEADLINE)
        .map_err(|e| cannot_reach("flush", &socket, &pins, e))?
        .flushed
        .context("the agent's answer says nothing of the flush")?;
    for f in flushed {
        println!("recorder {}: {} records flushed", f.recorder, f.records);
    }
    Ok(())
}

pub fn state(name: &str, on: bool, for_: Option<&str>, at: &AgentAt) -> anyhow::Result<()> {
    let for_ms = match for_ {
        Some(_) if !on => bail!("--for is only for `state NAME on`"),
        Some(text) => {
            let d = parse_duration(text).map_err(|e| anyhow::anyhow!("--for: {e}"))?;
            if !(MIN_STATE_DURATION..=MAX_STATE_DURATION).contains(&d) {
                bail!(
                    "--for {text}: a state is on for 1s to 24h, as a state's duration in a rule \
                     file"
                );
            }
            Some(d.as_millis() as u64)
        }
        None => None,
    };
    let (socket, pins) = locate(at)?;
    let request = Request::State {
        name: name.to_string(),
        on,
        for_ms,
    };
    match control::call(&socket, &request) {
        Ok(_) => {}
        // No agent: states are kernel state, pinned with the filter; set there directly (the
        // kernel reads them as the agent would have set them).
        Err(CallError::NoAgent(_)) if euid() == 0 && kernel::has_pins(&pins) => {
            kernel::pinned_set_state(
                &pins,
                name,
                on,
                for_ms.map(std::time::Duration::from_millis),
            )?;
            println!(
                "no agent is running: set on the pinned state under {}",
                pins.display()
            );
        }
        Err(e) => return Err(cannot_reach("state", &socket, &pins, e)),
    }
    println!("state {name} is {}", if on { "on" } else { "off" });
    Ok(())
}
