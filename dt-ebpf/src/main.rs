//! dt's kernel programs, one file per program, named after the hook it attaches to. The OTLP
//! hook is `sock_ops.rs` and `sk_msg.rs`; the uprobe hook is `uprobe.rs`. Their maps are in
//! `maps.rs`.
//!
//! - `dt_sockops` (sock_ops, on a cgroup v2): puts TCP connections to the configured OTLP/HTTP
//!   ports into the `SOCKS` SockHash.
//! - `dt_msg` (sk_msg, on `SOCKS`): follows HTTP/1.1 request boundaries on each connection,
//!   corks every `POST /v1/logs` protobuf request whole, walks it, evaluates the rules per log
//!   record, removes dropped records and fixes every length. Anything else passes untouched.
//! - `dt_uprobe` (uprobe, at the entry of probed log functions): evaluates the uprobe hooks'
//!   rules per call; counts, and captures calls into a ring buffer for the agent.
//!
//! `dt_msg` never returns anything but SK_PASS: a send never fails because of dt.
#![no_std]
#![no_main]
// Atomic read-modify-write (sampling, rate limiting): core's atomic types lack it on BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod dynamic;
mod maps;
mod sk_msg;
mod sock_ops;
mod uprobe;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
