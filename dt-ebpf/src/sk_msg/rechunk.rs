//! Chunked requests of several data chunks.
//!
//! The walker reads a body as one run of bytes, and a body split into chunks is not one: its
//! data is interleaved with size lines. So such a request is rewritten, in place, as one chunk
//!
//! ```text
//! <head> <size, hex> CRLF <the data of every chunk> CRLF 0 CRLF CRLF <the old tail>
//! ```
//!
//! which is never longer than the framing it replaces (two chunks or more have at least five
//! bytes of framing each), and walked as a request of one chunk. Its bytes as sent are kept
//! first in a [`Rebody`] buffer (one per CPU, taken with a compare-exchange), and the data is
//! copied from there, following the chunk framing. Then:
//! - the walk failed, or changes nothing: the bytes as sent are copied back. The request passes
//!   byte for byte, its framing as sent;
//! - the walk changes something: the old tail is popped (if the kernel refuses, the bytes are
//!   copied back and the request passes) and the plan is applied as for any request of one
//!   chunk: the walk's offsets are where the data now is, and the size line is its length.
//!
//! No push and no allocation: every copy overwrites bytes of the request, which was made
//! linear before, so none of them can fail half-way.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg},
    ptr,
};

use aya_ebpf::{
    bindings::sk_msg_md,
    helpers::generated::{
        bpf_get_smp_processor_id, bpf_loop, bpf_msg_pop_data, bpf_msg_pull_data,
        bpf_probe_read_kernel,
    },
};
use dt_ebpf_common::{
    REBODY_BYTES, REBODY_PIECE, REBODY_SLOTS, Rebody, RuleSet, SockState,
    chunked::{MAX_CHUNKS, MAX_SCAN_STEPS, Scan},
    walk::Editor,
    wire::Source,
};

use super::{WALK_DONE, WINDOW, Window};
use crate::maps::REBODY;

/// Offsets into a buffer's bytes are masked with this (its size is a power of two).
const MASK: u32 = REBODY_BYTES - 1;
/// Bytes one write step moves into the message.
const OUT_STEP: u32 = 64;
/// Upper bound on the steps of copying a whole request out: a step per [`OUT_STEP`] bytes, and
/// per byte of each chunk's last [`OUT_STEP`], plus a scan of its framing.
const OUT_STEPS: u32 = REBODY_BYTES / OUT_STEP + (MAX_CHUNKS + 1) * OUT_STEP + MAX_SCAN_STEPS + 8;
/// Upper bound on the steps of copying a whole request in.
const IN_STEPS: u32 = REBODY_BYTES / REBODY_PIECE + 2;

// What [`prepare`] and [`conclude`] say (the walk's own failures are negative as in `walk_cb`).
/// Nothing changes: the request passes as sent (its bytes copied back).
const MULTI_UNCHANGED: i64 = 0;
/// Rewritten as one chunk for good: apply the plan (`SockState::total` is its new length).
const MULTI_REWRITTEN: i64 = 1;
/// The rule set slot changed during the walk.
pub(super) const MULTI_GENERATION: i64 = -5;
/// No buffer free (another request is using this CPU's).
pub(super) const MULTI_BUSY: i64 = -6;
/// The request could not be made linear, copied or shortened.
pub(super) const MULTI_PULL: i64 = -7;

/// The buffer this CPU uses (the program runs on one CPU from start to end).
#[inline(always)]
fn cpu_buffer() -> Option<*mut Rebody> {
    let cpu = unsafe { bpf_get_smp_processor_id() } & (REBODY_SLOTS - 1);
    REBODY.get_ptr_mut(cpu)
}

/// Takes the buffer, if no other request (on this CPU, preempted) has it.
#[inline(always)]
fn take(p: *mut Rebody) -> bool {
    // SAFETY: an aligned u32 of a map value; BPF's atomic compare-exchange.
    let (_, taken) = unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            ptr::addr_of_mut!((*p).busy),
            0,
            1,
        )
    };
    taken
}

#[inline(always)]
fn give_back(p: *mut Rebody) {
    // SAFETY: as in `take`.
    unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
            ptr::addr_of_mut!((*p).busy),
            1,
            0,
        )
    };
}

/// The buffer as a [`Source`] for the chunk scan: its byte `i` is the request's byte
/// `base + i`.
#[repr(C)]
struct Saved {
    bytes: *mut u8,
    base: u32,
    len: u32,
}

impl Source for Saved {
    #[inline(always)]
    fn ensure(&mut self, _off: u32, _len: u32) -> bool {
        true
    }

    #[inline(always)]
    fn byte(&mut self, off: u32) -> Option<u8> {
        let i = off.wrapping_sub(self.base);
        if i >= self.len {
            return None;
        }
        // SAFETY: inside the buffer's bytes (masked offset).
        Some(unsafe { *self.bytes.add((i & MASK) as usize) })
    }
}

/// The copy loops' context.
#[repr(C)]
struct CopyCtx {
    msg: *mut sk_msg_md,
    st: *mut SockState,
    saved: Saved,
}

/// Copying in: `len` bytes of the message from `msg` into the buffer at `buf`, a piece a step.
extern "C" fn copy_in_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut CopyCtx) };
    let st = unsafe { &mut *c.st };
    let cs = &mut st.copy;
    if cs.len == 0 {
        return 1;
    }
    let n = if cs.len > REBODY_PIECE {
        REBODY_PIECE
    } else {
        cs.len
    };
    let msg = c.msg;
    if unsafe { bpf_msg_pull_data(msg, cs.msg, cs.msg + n, 0) } != 0 {
        cs.failed = 1;
        return 1;
    }
    let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
    let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
    if data + n as usize > data_end || cs.buf > MASK {
        cs.failed = 1;
        return 1;
    }
    let ret = unsafe {
        bpf_probe_read_kernel(
            c.saved.bytes.add((cs.buf & MASK) as usize).cast(),
            n & (2 * REBODY_PIECE - 1),
            data as *const c_void,
        )
    };
    if ret != 0 {
        cs.failed = 1;
        return 1;
    }
    cs.msg += n;
    cs.buf += n;
    cs.len -= n;
    0
}

/// Copying out: `len` bytes of the buffer from `buf` into the message at `msg`, at most
/// [`OUT_STEP`] a step. With `scan` set, once a copy is done the chunk scan goes on over the
/// buffer, and each chunk's data is copied to where the data before it ends.
extern "C" fn copy_out_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut CopyCtx) };
    let st = unsafe { &mut *c.st };
    let len = st.copy.len;
    if len == 0 {
        if st.copy.scan == 0 {
            return 1;
        }
        let limit = c.saved.base + c.saved.len;
        // SAFETY: the scan and the copy are distinct fields of the socket's state.
        let scan = unsafe { &mut *ptr::addr_of_mut!((*c.st).chunk) };
        if scan.at_data() {
            st.copy.buf = scan.pos - c.saved.base;
            st.copy.msg = st.body_start + (scan.data_len - scan.size);
            st.copy.len = scan.size;
        }
        return match scan.step(&mut c.saved, limit) {
            Scan::More => 0,
            Scan::Done => 1,
            _ => {
                st.copy.failed = 1;
                1
            }
        };
    }
    let n = if len >= OUT_STEP { OUT_STEP } else { 1 };
    let off = st.copy.msg;
    let msg = c.msg;
    let s = &mut st.win;
    if off < s.start || off + n > s.end {
        let end = if len > WINDOW {
            off + WINDOW
        } else {
            off + len
        };
        if unsafe { bpf_msg_pull_data(msg, off, end, 0) } != 0 {
            s.start = 0;
            s.end = 0;
            st.copy.failed = 1;
            return 1;
        }
        s.start = off;
        s.end = end;
    }
    let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
    let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
    let p = data + ((off - s.start) & (WINDOW - 1)) as usize;
    // SAFETY: a masked offset into the buffer's bytes, which have OUT_STEP to spare past it.
    let from = unsafe { c.saved.bytes.add((st.copy.buf & MASK) as usize) };
    if n == OUT_STEP {
        if p + OUT_STEP as usize > data_end {
            st.copy.failed = 1;
            return 1;
        }
        let mut k = 0usize;
        while k < OUT_STEP as usize {
            // SAFETY: `p..p + OUT_STEP` is inside the packet (checked above).
            unsafe { *((p + k) as *mut u8) = *from.add(k) };
            k += 1;
        }
    } else {
        if p + 1 > data_end {
            st.copy.failed = 1;
            return 1;
        }
        unsafe { *(p as *mut u8) = *from };
    }
    st.copy.msg += n;
    st.copy.buf += n;
    st.copy.len -= n;
    0
}

/// Runs the copy out as `st.copy` describes it.
#[inline(always)]
fn copy_out(msg: *mut sk_msg_md, st: *mut SockState, bytes: *mut u8, base: u32, len: u32) -> bool {
    unsafe { (*st).win.start = 0 };
    unsafe { (*st).win.end = 0 };
    let mut cc = CopyCtx {
        msg,
        st,
        saved: Saved { bytes, base, len },
    };
    unsafe {
        bpf_loop(
            OUT_STEPS,
            copy_out_cb as *mut c_void,
            ptr::from_mut(&mut cc).cast(),
            0,
        );
    }
    let st = unsafe { &*st };
    st.copy.failed == 0 && st.copy.len == 0
}

/// Copies the bytes as sent back over the request (same length).
#[inline(always)]
fn put_back(msg: *mut sk_msg_md, st_ptr: *mut SockState, bytes: *mut u8) -> bool {
    let st = unsafe { &mut *st_ptr };
    let (base, len) = (st.head_len, st.total - st.head_len);
    st.copy.msg = base;
    st.copy.buf = 0;
    st.copy.len = len;
    st.copy.failed = 0;
    st.copy.scan = 0;
    copy_out(msg, st_ptr, bytes, base, len)
}

/// Before the walk: a request of several chunks is rewritten as one chunk ([`join`]). 0, or
/// why the request passes. Not inlined, and nothing it does stays in the caller's registers, so
/// the verifier checks the walk after it once, whatever the request.
#[inline(never)]
pub(super) fn prepare(msg: *mut sk_msg_md, st: *mut SockState) -> i64 {
    if unsafe { (*st).multi } == 0 {
        return 0;
    }
    let Some(buf) = cpu_buffer() else {
        return MULTI_PULL;
    };
    join(msg, st, buf)
}

/// After the walk: the walk's outcome (`WALK_DONE`, or why it failed), once a request of
/// several chunks is settled ([`finish`]). Not inlined, as [`prepare`].
#[inline(never)]
pub(super) fn conclude(msg: *mut sk_msg_md, st: *mut SockState, rs: &'static RuleSet) -> i64 {
    if unsafe { (*st).multi } == 0 {
        return unsafe { (*st).walk.outcome } as i64;
    }
    let Some(buf) = cpu_buffer() else {
        return MULTI_PULL;
    };
    match finish(msg, st, rs, buf) {
        MULTI_UNCHANGED | MULTI_REWRITTEN => WALK_DONE as i64,
        r => r,
    }
}

/// Takes the buffer, keeps the request's bytes as sent in it, and rewrites the request as one
/// chunk (its tail left as it was). On success the buffer stays taken until [`finish`].
#[inline(always)]
fn join(msg: *mut sk_msg_md, st_ptr: *mut SockState, buf: *mut Rebody) -> i64 {
    if !take(buf) {
        return MULTI_BUSY;
    }
    let r = join_inner(msg, st_ptr, buf);
    if r < 0 {
        give_back(buf);
    }
    r
}

#[inline(always)]
fn join_inner(msg: *mut sk_msg_md, st_ptr: *mut SockState, buf: *mut Rebody) -> i64 {
    let st = unsafe { &mut *st_ptr };
    let bytes = unsafe { ptr::addr_of_mut!((*buf).bytes) } as *mut u8;
    let (head, end) = (st.head_len, st.total);
    let data_len = st.body_end - st.body_start;
    let digits = st.cl_digits;
    if end <= head
        || end - head > REBODY_BYTES
        || st.body_end + 7 > end
        || digits == 0
        || digits > 8
        || unsafe { bpf_msg_pull_data(msg, 0, end, 0) } != 0
    {
        return MULTI_PULL;
    }
    // Keep the bytes as sent.
    st.copy.msg = head;
    st.copy.buf = 0;
    st.copy.len = end - head;
    st.copy.failed = 0;
    let mut cc = CopyCtx {
        msg,
        st: st_ptr,
        saved: Saved {
            bytes,
            base: head,
            len: end - head,
        },
    };
    unsafe {
        bpf_loop(
            IN_STEPS,
            copy_in_cb as *mut c_void,
            ptr::from_mut(&mut cc).cast(),
            0,
        );
    }
    let st = unsafe { &mut *st_ptr };
    if st.copy.failed != 0 || st.copy.len != 0 {
        return MULTI_PULL;
    }
    // Each chunk's data after the one before, following the framing in the buffer.
    st.chunk.start(head);
    st.copy.len = 0;
    st.copy.failed = 0;
    st.copy.scan = 1;
    let ok = copy_out(msg, st_ptr, bytes, head, end - head);
    let st = unsafe { &mut *st_ptr };
    if !ok || st.chunk.data_len != data_len {
        put_back(msg, st_ptr, bytes);
        return MULTI_PULL;
    }
    // The size line (its digits are those of the data's length) and the last chunk.
    let mut w = Window::new(msg, st_ptr, end);
    if !w.reach(head, digits + 2) {
        put_back(msg, st_ptr, bytes);
        return MULTI_PULL;
    }
    let mut v = data_len;
    let mut k = 0;
    while k < 8 {
        if k >= digits {
            break;
        }
        let d = (v & 15) as u8;
        w.put(
            head + digits - 1 - k,
            if d < 10 { b'0' + d } else { b'a' + d - 10 },
        );
        v >>= 4;
        k += 1;
    }
    w.put(head + digits, b'\r');
    w.put(head + digits + 1, b'\n');
    let tail = st.body_end;
    if !w.reach(tail, 7) {
        put_back(msg, st_ptr, bytes);
        return MULTI_PULL;
    }
    let last = *b"\r\n0\r\n\r\n";
    let mut k = 0;
    while k < 7 {
        w.put(tail + k as u32, last[k]);
        k += 1;
    }
    MULTI_UNCHANGED
}

/// After the walk of a request [`join`] rewrote (whatever its outcome): keeps it as one chunk
/// (its old tail popped) if the walk succeeded and its plan changes anything, else puts the
/// bytes as sent back. Gives the buffer back.
#[inline(always)]
fn finish(
    msg: *mut sk_msg_md,
    st_ptr: *mut SockState,
    rs: &'static RuleSet,
    buf: *mut Rebody,
) -> i64 {
    let bytes = unsafe { ptr::addr_of_mut!((*buf).bytes) } as *mut u8;
    let r = finish_inner(msg, st_ptr, rs);
    if r != MULTI_REWRITTEN {
        put_back(msg, st_ptr, bytes);
    }
    give_back(buf);
    r
}

#[inline(always)]
fn finish_inner(msg: *mut sk_msg_md, st_ptr: *mut SockState, rs: &'static RuleSet) -> i64 {
    let st = unsafe { &mut *st_ptr };
    let outcome = st.walk.outcome;
    if outcome != WALK_DONE {
        return if outcome < 0 { outcome as i64 } else { -8 };
    }
    if super::slot_generation(rs) != st.generation {
        return MULTI_GENERATION;
    }
    if !st.walk.changes() {
        return MULTI_UNCHANGED;
    }
    let (new_end, end) = (st.body_end + 7, st.total);
    if new_end > end {
        return MULTI_PULL;
    }
    if new_end < end && unsafe { bpf_msg_pop_data(msg, new_end, end - new_end, 0) } != 0 {
        return MULTI_PULL;
    }
    st.total = new_end;
    MULTI_REWRITTEN
}
