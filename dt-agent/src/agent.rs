//! Loading, attaching and feeding the kernel programs.

use std::path::PathBuf;

use crate::stats::Stats;

/// What `dt-agent run` needs to attach.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Directory whose `*.toml` files make the rule set.
    pub rules_dir: PathBuf,
    /// OTLP/HTTP ports whose connections are hooked.
    pub ports: Vec<u16>,
    /// cgroup v2 directory for sock_ops (default: the root of the v2 hierarchy).
    pub cgroup: Option<PathBuf>,
    /// Requests longer than this pass through as `oversize`.
    pub max_request: u32,
}

/// A loaded and attached agent. Dropping it switches to pass-through, drains, and detaches.
pub struct Agent {}

impl Agent {
    pub fn start(_cfg: AgentConfig) -> anyhow::Result<Agent> {
        anyhow::bail!("not yet")
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        anyhow::bail!("not yet")
    }
}
