//! The hooks: where dt's kernel programs run and what the agent does for each. [`otlp`]: OTLP/HTTP
//! log export requests on hooked connections (sock_ops + sk_msg); [`uprobe`]: calls of probed
//! functions (uprobes), with the capture export in [`crate::export::capture`].

pub mod otlp;
pub mod uprobe;
