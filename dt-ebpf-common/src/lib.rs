//! Types shared by dt's kernel programs (`dt-ebpf`) and its agent (`dt-agent`), and the code
//! that makes the same decision on both sides: the HTTP request-head parser and the OTLP
//! `ExportLogsServiceRequest` walker.
//!
//! Everything here is `no_std`, allocation-free and written for the BPF verifier: every loop is
//! bounded, nothing recurses, array indexes are masked, and no code path can panic.
#![no_std]

pub mod chunked;
pub mod decide;
pub mod http;
pub mod layout;
pub mod uprobe;
pub mod walk;
pub mod wire;

pub use layout::*;
