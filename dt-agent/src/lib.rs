//! dt-agent: compiles rule files into BPF map entries, loads and attaches dt's kernel programs,
//! and serves the control verbs.

pub mod agent;
pub mod config;
pub mod control;
pub mod daemon;
pub mod drain;
pub mod metrics;
mod otlp_http;
pub mod probes;
pub mod ripcord;
pub mod rules;
pub mod stats;

pub use agent::{Agent, AgentConfig};
pub use stats::Stats;
