//! dt-agent: compiles rule files into BPF map entries, loads and attaches dt's kernel programs,
//! and serves the control verbs. The README's "Map of the files: the agent" lists every module.

pub mod advice;
pub mod ceiling;
pub mod control;
pub mod drain;
pub mod export;
pub mod hooks;
pub mod kernel;
pub mod opamp;
pub mod ripcord;
pub mod rules;
pub mod service;
pub mod settings;
pub mod stats;
mod sys;
pub mod text;

pub use export as metrics;
pub use kernel::{Agent, AgentConfig};
pub use stats::Stats;

/// The agent's kernel side under the path it has always had (`dt_agent::agent::pin_dir`, ...).
pub mod agent {
    pub use crate::kernel::{
        Agent, AgentConfig, has_pins, pin_dir, pinned_set_enabled, pinned_stats,
    };
    pub use crate::rules::{RuleErrors, compile_dir};
}
