//! sock_ops: hook new connections to the OTLP/HTTP ports, and release what a hooked connection
//! held when it closes.

use core::ptr;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::generated::{
        bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt, bpf_sk_storage_get,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use dt_ebpf_common::{PHASE_CHUNKED, PHASE_CORKED, PHASE_HEAD, PHASE_UNTRACKED, SockState};

use crate::dynamic;
use crate::maps::{HELD, PORTS, SOCK_STATE, SOCKS, TOTALS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

const SOL_SOCKET: i32 = 1;
const SO_SNDBUF: i32 = 7;
/// The send buffer a hooked connection gets at least (the kernel doubles what is set, and caps
/// it at `net.core.wmem_max`): room for a whole request of the largest size dt holds.
const SNDBUF_WANTED: i32 = dt_ebpf_common::MAX_REQUEST_CEILING as i32;

/// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;

#[sock_ops]
pub fn dt_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => hook(&ctx),
        BPF_SOCK_OPS_STATE_CB => state_change(&ctx),
        _ => {}
    }
    1
}

/// The socket's storage (created when `create`), or null.
#[inline(always)]
fn sock_state(ctx: &SockOpsContext, create: bool) -> *mut SockState {
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return ptr::null_mut();
    }
    unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&SOCK_STATE).cast_mut().cast(),
            sk.cast(),
            ptr::null_mut(),
            if create {
                BPF_SK_STORAGE_GET_F_CREATE as u64
            } else {
                0
            },
        )
    }
    .cast()
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
    // The state starts zeroed (IDLE); it learns its cookie, the key of its HELD entry.
    let st = sock_state(ctx, true);
    if !st.is_null() {
        unsafe { (*st).cookie = cookie };
    }
    // Tell us when the connection changes state, so that a request held when it closes is
    // released (the kernel frees its corked bytes with the socket).
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    if SOCKS
        .update(&mut cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64)
        .is_ok()
    {
        if let Some(t) = TOTALS.get_ptr_mut(0) {
            dynamic::atomic_add(unsafe { ptr::addr_of_mut!((*t).connections) }, 1);
        }
        room_for_a_request(ctx);
    }
}

/// A request dt has held (corked) leaves in one push when it is complete. If the socket's
/// send buffer cannot take it all and the sender does not wait (non-blocking, or a send
/// timeout), the kernel frees the part it could not queue and tells the sender fewer bytes
/// went: the sender then writes its own (unedited) bytes again after dt's edited ones. So a
/// hooked connection's send buffer is made large enough for the largest request dt holds
/// (never made smaller; the application's own larger setting stays).
#[inline(always)]
fn room_for_a_request(ctx: &SockOpsContext) {
    let mut now: i32 = 0;
    let got = unsafe {
        bpf_getsockopt(
            ctx.ops.cast(),
            SOL_SOCKET,
            SO_SNDBUF,
            ptr::from_mut(&mut now).cast(),
            4,
        )
    };
    // getsockopt gives the doubled value.
    if got == 0 && now >= 2 * SNDBUF_WANTED {
        return;
    }
    let mut want = SNDBUF_WANTED;
    let _ = unsafe {
        bpf_setsockopt(
            ctx.ops.cast(),
            SOL_SOCKET,
            SO_SNDBUF,
            ptr::from_mut(&mut want).cast(),
            4,
        )
    };
}

/// A hooked connection changed state. Once it is closed for sending (our close or shutdown:
/// FIN_WAIT1, LAST_ACK; a reset or the end: CLOSE), a request still held can never complete:
/// count it released and forget who held it.
#[inline(always)]
fn state_change(ctx: &SockOpsContext) {
    let new = ctx.arg(1);
    if new == TCP_ESTABLISHED || new == TCP_CLOSE_WAIT {
        return;
    }
    let st = sock_state(ctx, false);
    if st.is_null() {
        return;
    }
    let st = unsafe { &mut *st };
    if st.phase != PHASE_CORKED && st.phase != PHASE_HEAD && st.phase != PHASE_CHUNKED {
        return;
    }
    st.phase = PHASE_UNTRACKED;
    let _ = HELD.remove(st.cookie);
    if let Some(t) = TOTALS.get_ptr_mut(0) {
        let t = unsafe { &mut *t };
        dynamic::atomic_add(ptr::addr_of_mut!(t.uncorked), 1);
        dynamic::atomic_add(ptr::addr_of_mut!(t.released), 1);
    }
}
