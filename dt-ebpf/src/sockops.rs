//! sock_ops: hook new connections to the OTLP/HTTP ports.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::maps::{PORTS, SOCKS, TOTALS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn dt_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        hook(&ctx);
    }
    1
}

#[inline(always)]
fn hook(ctx: &SockOpsContext) {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let port = u32::from_be(ctx.remote_port());
    if unsafe { PORTS.get(port) }.is_none() {
        return;
    }
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if SOCKS
        .update(&mut cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
        .is_ok()
        && let Some(t) = TOTALS.get_ptr_mut(0)
    {
        unsafe { (*t).connections += 1 };
    }
}
