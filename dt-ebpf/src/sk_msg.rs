//! sk_msg: follow HTTP/1.1 requests on a hooked connection and filter OTLP log requests.
//!
//! Per connection (socket storage), a request is in one of three phases:
//! - IDLE: the next byte starts a request. The head is parsed; a request dt does not edit is
//!   passed with `apply_bytes(its length)` so the kernel skips the rest of it; a request dt edits
//!   is corked whole (`cork_bytes(its length)`), unless it is already all here.
//! - CORKED: this run sees the corked request from its first byte. It is walked, the plan is
//!   applied, and `apply_bytes(new length)` hands any bytes after it to the next run.
//! - HEAD: the head of the next request is not all here: its bytes are corked (one more byte at a
//!   time) and the next run parses it again from its first byte, as in IDLE.
//! - UNTRACKED: the request boundary is lost (chunked, not HTTP/1.x): everything passes.
//!
//! While bytes are corked (CORKED, HEAD) the request is *held*: `corked` counts it, `uncorked`
//! counts its release, and `HELD` says who sent it since when. The kernel frees corked bytes
//! when the socket leaves the SockHash, so an agent waits until nothing is held before it
//! detaches; sock_ops releases a held request whose connection closes.
//!
//! Every run sets both `apply_bytes` and `cork_bytes` explicitly: the kernel reuses its cork
//! message across sends, and stale values in it would cork or skip the wrong bytes.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, sk_action, sk_msg_md},
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_loop,
        bpf_msg_apply_bytes, bpf_msg_cork_bytes, bpf_msg_pop_data, bpf_msg_pull_data,
        bpf_msg_push_data, bpf_probe_read_kernel, bpf_sk_storage_get,
    },
    macros::sk_msg,
    programs::SkMsgContext,
};
use dt_ebpf_common::{
    AcTable, Control, GroupNote, GroupNotes, HashEntry, HashKey, Held, MAX_EDITS, MAX_FIXES,
    MAX_GROUP_NOTES, MAX_HEAD_LEN, MAX_MASKS, MAX_RULES, N_PASSTHROUGH, NEED_GROUPS, NEED_RECORD,
    PHASE_CHUNK_PASS, PHASE_CHUNKED, PHASE_CORKED, PHASE_HEAD, PHASE_IDLE, PHASE_UNTRACKED,
    Passthrough, RuleSet, STR_KEY_BYTES, SockState, StrKey, Totals, Trigger, WinState,
    chunked::{self, Chunked, Scan},
    decide,
    http::{self, Feed},
    walk::{self, Editor, Env, Step},
    wire::{CHUNK_BYTES, Error, RECORD_BYTES, Source},
};

mod groups;
mod rechunk;
mod record;

use crate::dynamic::{self, atomic_update};
use crate::maps::{
    AC_FLAT, ATTR_HASHES, CGROUP_IDS, CONTROL, ENRICH_HOST, HELD, RATES, RULE_COUNTERS, RULESETS,
    SAMPLES, SOCK_STATE, STRINGS, TOTALS,
};

/// A block of zeros to clear lookup keys from.
static ZEROS: [u8; STR_KEY_BYTES] = [0; STR_KEY_BYTES];

/// Head bytes fed per `bpf_loop` step.
const HEAD_CHUNK: u32 = 8;

/// Bytes made directly readable by one pull (a power of two, below the verifier's 64 KiB).
const WINDOW: u32 = 16384;
/// Upper bound on walk steps for one request.
const MAX_STEPS: u32 = 1 << 20;
/// Upper bound on decision steps: every rule, every edit, and every edit and mask again.
const DECIDE_STEPS: u32 = (MAX_RULES + 2 * MAX_EDITS + MAX_MASKS) as u32 + 4;
/// Upper bound on apply steps for one request (shared with the host's walk, which checks it).
const APPLY_STEPS: u32 = walk::MAX_APPLY_STEPS;

#[sk_msg]
pub fn dt_msg(ctx: SkMsgContext) -> u32 {
    let (apply, cork) = match handle(&ctx) {
        Next::Verdict(v) => v,
        Next::Walk(st) => unpack(walk_request(ctx.msg, st)),
    };
    unsafe {
        bpf_msg_apply_bytes(ctx.msg, apply);
        bpf_msg_cork_bytes(ctx.msg, cork);
    }
    sk_action::SK_PASS
}

/// What to tell the kernel: apply the verdict to this many bytes (0 = the whole message), cork
/// until this many bytes are here (0 = don't).
type Verdict = (u32, u32);

const WHOLE: Verdict = (0, 0);

/// What the head says to do next: answer now, or walk the whole request (which is here).
enum Next {
    Verdict(Verdict),
    Walk(*mut SockState),
}

/// A verdict as one register (what a BPF function can return).
#[inline(always)]
fn pack((apply, cork): Verdict) -> u64 {
    ((apply as u64) << 32) | cork as u64
}

#[inline(always)]
fn unpack(v: u64) -> Verdict {
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
fn handle(ctx: &SkMsgContext) -> Next {
    let msg = ctx.msg;
    let size = ctx.size();
    let Some(totals) = TOTALS.get_ptr_mut(0) else {
        return Next::Verdict(WHOLE);
    };
    let totals = unsafe { &mut *totals };
    let Some(control) = CONTROL.get(0) else {
        return Next::Verdict(WHOLE);
    };
    let sk = unsafe { (*msg).__bindgen_anon_3.sk };
    if sk.is_null() {
        return Next::Verdict(WHOLE);
    }
    let st = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&SOCK_STATE).cast_mut().cast(),
            sk.cast(),
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    } as *mut SockState;
    if st.is_null() {
        // No state, no boundaries: nothing to do but pass.
        untracked(totals, size);
        return Next::Verdict(WHOLE);
    }
    let st = unsafe { &mut *st };
    match st.phase {
        PHASE_UNTRACKED => {
            untracked(totals, size);
            Next::Verdict(WHOLE)
        }
        PHASE_CORKED => corked(size, st, control, totals),
        PHASE_CHUNKED => {
            if size < st.total {
                // Out of cork space: the verdict on these bytes is final, and the request's end
                // is not known.
                release(st, totals);
                return Next::Verdict(lose_track_counted(st, totals, Passthrough::Partial, size));
            }
            st.chunk.start(st.head_len);
            chunked_run(ctx.msg, size, st)
        }
        PHASE_CHUNK_PASS => chunked_run(ctx.msg, size, st),
        _ => fresh(msg, size, st, control, totals),
    }
}

#[inline(always)]
fn untracked(totals: &mut Totals, size: u32) {
    dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_in), size as u64);
    dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_out), size as u64);
    dynamic::atomic_add(ptr::addr_of_mut!(totals.untracked_bytes), size as u64);
}

/// Passes a whole request of `total` bytes untouched, counted under `why`.
#[inline(always)]
fn pass(totals: &mut Totals, why: Passthrough, total: u32) -> Verdict {
    count_passthrough(totals, why);
    dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_in), total as u64);
    dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_out), total as u64);
    (total, 0)
}

/// Counts one request under `why`. The index is a discriminant, so the compiler drops a bound
/// check it knows holds, but the verifier must see it: the index is read back from memory
/// first.
#[inline(always)]
fn count_passthrough(totals: &mut Totals, why: Passthrough) {
    let mut slot = why as u32;
    // SAFETY: a store to and a load from a local.
    let i = unsafe {
        ptr::write_volatile(&mut slot, why as u32);
        ptr::read_volatile(&slot)
    } as usize;
    if i < N_PASSTHROUGH {
        dynamic::atomic_add(ptr::addr_of_mut!(totals.passthrough[i]), 1);
    }
}

/// Stops following the connection: this message and everything after it pass.
#[inline(always)]
fn lose_track(st: &mut SockState, totals: &mut Totals, why: Passthrough, size: u32) -> Verdict {
    st.phase = PHASE_UNTRACKED;
    dynamic::atomic_add(ptr::addr_of_mut!(totals.requests), 1);
    count_passthrough(totals, why);
    untracked(totals, size);
    WHOLE
}

// ------------------------------------------------------------------------------------------
// A request starts here

extern "C" fn head_cb(i: u64, ctx: *mut c_void) -> i64 {
    let src = unsafe { &mut *(ctx as *mut Window) };
    // SAFETY: the head is a field of the socket's state that the window never touches.
    let head = unsafe { &mut *ptr::addr_of_mut!((*src.st).head) };
    let base = (i as u32) * HEAD_CHUNK;
    let mut k = 0;
    while k < HEAD_CHUNK {
        let off = base + k;
        let Some(b) = src.byte(off) else {
            return 1;
        };
        if dt_head_feed(head, off as u64, b as u64) != 0 {
            return 1;
        }
        k += 1;
    }
    0
}

#[inline(always)]
fn fresh(
    msg: *mut sk_msg_md,
    size: u32,
    st: &mut SockState,
    control: &Control,
    totals: &mut Totals,
) -> Next {
    // In phase HEAD (a head held for more bytes) this run sees the head again from its first
    // byte: it stays held only if it is still incomplete. (The phase is read from the socket's
    // storage where it is needed, not kept in a register across the parse: a value the verifier
    // tracks there would double the states it explores.)
    let n = if size < MAX_HEAD_LEN {
        size
    } else {
        MAX_HEAD_LEN
    };
    st.head.reset();
    let mut src = Window::new(msg, st, n);
    if !src.ensure(0, n) {
        release_head(st, totals);
        return Next::Verdict(lose_track(st, totals, Passthrough::PullFailed, size));
    }
    unsafe {
        bpf_loop(
            n.div_ceil(HEAD_CHUNK),
            head_cb as *mut c_void,
            ptr::from_mut(&mut src).cast(),
            0,
        );
    }
    let h = st.head;
    if h.bad == 0 && h.len == 0 && n < MAX_HEAD_LEN {
        // The head is not all here yet; it cannot end without more bytes, so wait for one more.
        if st.phase != PHASE_HEAD {
            st.phase = PHASE_HEAD;
            hold(msg, st, totals, size + 1, PHASE_HEAD);
        }
        return Next::Verdict((0, size + 1));
    }
    release_head(st, totals);
    if h.bad != 0 || h.len == 0 {
        return Next::Verdict(lose_track(st, totals, Passthrough::BadHttp, size));
    }
    // A chunked request is followed only when it will be walked: its end is found by scanning
    // its chunks while it is corked.
    let chunked = h.chunked != 0;
    if chunked && (h.chunked != 1 || h.has_cl != 0) {
        return Next::Verdict(lose_track(st, totals, Passthrough::Chunked, size));
    }
    let total = h.len as u64
        + if h.has_cl != 0 {
            h.content_length as u64
        } else {
            0
        };
    let why = if control.enabled == 0 {
        Some(Passthrough::Disabled)
    } else if h.post_logs == 0 {
        Some(Passthrough::NotLogs)
    } else if h.compressed != 0 {
        Some(Passthrough::Compressed)
    } else if h.ctype == http::CTYPE_JSON {
        Some(Passthrough::Json)
    } else if h.ctype != http::CTYPE_PROTOBUF {
        Some(Passthrough::Other)
    } else if h.expect != 0 {
        Some(Passthrough::ExpectContinue)
    } else if total > control.max_request as u64 {
        Some(Passthrough::Oversize)
    } else {
        None
    };
    let total = total as u32;
    let no_rules = RULESETS
        .get(control.active_slot())
        .is_some_and(|rs| rs.n_rules == 0 && rs.enrich == 0);
    if chunked {
        let not_walked = match why {
            Some(Passthrough::Oversize) | None if no_rules => Some(Passthrough::NoRules),
            Some(Passthrough::Oversize) | None => None,
            w => w,
        };
        if let Some(why) = not_walked {
            // Not walked: it passes piece by piece as it comes, never held, and its framing is
            // followed across the pieces to where the next request begins.
            dynamic::atomic_add(ptr::addr_of_mut!(totals.requests), 1);
            count_passthrough(totals, why);
            st.chunk.start(h.len);
            st.phase = PHASE_CHUNK_PASS;
            return chunked_run(msg, size, st);
        }
        dynamic::atomic_add(ptr::addr_of_mut!(totals.requests), 1);
        st.slot = control.active_slot();
        st.generation = control.active_generation();
        st.head_len = h.len;
        st.chunk.start(h.len);
        st.phase = PHASE_CHUNKED;
        hold(msg, st, totals, size, PHASE_CHUNKED);
        return chunked_run(msg, size, st);
    }
    dynamic::atomic_add(ptr::addr_of_mut!(totals.requests), 1);
    if let Some(why) = why {
        return Next::Verdict(pass(totals, why, total));
    }
    // With an empty rule set there is nothing to evaluate: don't cork or walk.
    if no_rules {
        return Next::Verdict(pass(totals, Passthrough::NoRules, total));
    }
    st.slot = control.active_slot();
    st.generation = control.active_generation();
    st.head_len = h.len;
    st.total = total;
    st.body_start = h.len;
    st.body_end = total;
    st.cl_off = h.cl_off;
    st.cl_digits = if h.has_cl != 0 { h.cl_digits } else { 0 };
    st.cl_hex = 0;
    st.multi = 0;
    if size < total {
        st.phase = PHASE_CORKED;
        hold(msg, st, totals, total, PHASE_CORKED);
        return Next::Verdict((0, total));
    }
    Next::Walk(st)
}

extern "C" fn chunk_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let src = unsafe { &mut *(ctx as *mut Window) };
    // SAFETY: the scan is a field of the socket's state that the window never touches.
    let c = unsafe { &mut *ptr::addr_of_mut!((*src.st).chunk) };
    let limit = src.state().limit;
    match c.step(src, limit) {
        Scan::More => 0,
        _ => 1,
    }
}

/// Scans the chunk framing of the chunked request whose first `size` bytes are here (from its
/// head on): corks up to the least the request still has, or walks it once it is all here.
/// Requests of one data chunk are walked and edited (the chunk size rewritten); requests of
/// several pass untouched, counted `chunked`, and the connection stays followed. Framing dt
/// does not follow passes, and the connection is not followed any more.
#[inline(always)]
fn chunked_run(msg: *mut sk_msg_md, size: u32, st: &mut SockState) -> Next {
    let v = chunked_scan(msg, size, st);
    if v == WALK {
        Next::Walk(st)
    } else {
        Next::Verdict(unpack(v))
    }
}

/// [`chunked_scan`]'s answer when the request is all here and to be walked.
const WALK: u64 = u64::MAX;

/// Not inlined (one copy of the scan loop for the verifier); at most five arguments, so the
/// maps are looked up here again.
#[inline(never)]
fn chunked_scan(msg: *mut sk_msg_md, size: u32, st: *mut SockState) -> u64 {
    let (Some(totals), Some(control)) = (TOTALS.get_ptr_mut(0), CONTROL.get(0)) else {
        return pack(WHOLE);
    };
    let totals = unsafe { &mut *totals };
    let st = unsafe { &mut *st };
    pack_or_walk(chunked_scan_inner(msg, size, st, control, totals))
}

#[inline(always)]
fn pack_or_walk(n: Next) -> u64 {
    match n {
        Next::Walk(_) => WALK,
        Next::Verdict(v) => pack(v),
    }
}

#[inline(always)]
fn chunked_scan_inner(
    msg: *mut sk_msg_md,
    size: u32,
    st: &mut SockState,
    control: &Control,
    totals: &mut Totals,
) -> Next {
    let mut src = Window::new(msg, st, size);
    unsafe {
        bpf_loop(
            chunked::MAX_SCAN_STEPS,
            chunk_cb as *mut c_void,
            ptr::from_mut(&mut src).cast(),
            0,
        );
    }
    let c = st.chunk;
    if st.phase == PHASE_CHUNK_PASS {
        return Next::Verdict(chunk_pass(st, totals, &c, size));
    }
    match c.outcome(size) {
        Scan::Need => {
            let need = c.need();
            if need > control.max_request {
                release(st, totals);
                return Next::Verdict(lose_track_counted(st, totals, Passthrough::Oversize, size));
            }
            st.phase = PHASE_CHUNKED;
            st.total = need;
            Next::Verdict((0, need))
        }
        Scan::Done => {
            st.phase = PHASE_IDLE;
            release(st, totals);
            let end = c.end;
            if end > control.max_request {
                return Next::Verdict(pass(totals, Passthrough::Oversize, end));
            }
            if control.enabled == 0 {
                return Next::Verdict(pass(totals, Passthrough::Disabled, end));
            }
            st.total = end;
            st.cl_hex = 1;
            if c.n_chunks > 1 {
                // Walked from a buffer; where its data will be once rewritten as one chunk, if
                // it is: after a size line of as many hex digits as the data's length needs.
                let d = hex_digits(c.data_len);
                st.multi = 1;
                st.cl_off = st.head_len;
                st.cl_digits = d;
                st.body_start = st.head_len + d + 2;
                st.body_end = st.body_start + c.data_len;
                return Next::Walk(st);
            }
            st.multi = 0;
            st.body_start = c.first_off;
            st.body_end = c.first_off + c.first_len;
            st.cl_off = c.first_digits_off;
            st.cl_digits = c.first_digits;
            if c.n_chunks == 0 {
                // No data at all.
                st.body_start = c.pos;
                st.body_end = c.pos;
                st.cl_digits = 0;
            }
            Next::Walk(st)
        }
        _ => {
            release(st, totals);
            Next::Verdict(lose_track_counted(st, totals, Passthrough::Chunked, size))
        }
    }
}

/// A piece of a chunked request that passes unwalked ([`PHASE_CHUNK_PASS`]), scanned: it
/// passes at once. The request's end ends the phase, and the bytes after it are the next
/// request's; framing dt does not follow leaves the connection unfollowed from here.
#[inline(always)]
fn chunk_pass(st: &mut SockState, totals: &mut Totals, c: &Chunked, size: u32) -> Verdict {
    match c.outcome(size) {
        Scan::Need => {
            st.chunk.rebase(size);
            dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_in), size as u64);
            dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_out), size as u64);
            WHOLE
        }
        Scan::Done => {
            st.phase = PHASE_IDLE;
            dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_in), c.end as u64);
            dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_out), c.end as u64);
            (c.end, 0)
        }
        _ => {
            st.phase = PHASE_UNTRACKED;
            untracked(totals, size);
            WHOLE
        }
    }
}

/// Hex digits of `v` (at least one).
#[inline(always)]
fn hex_digits(v: u32) -> u32 {
    let mut d = 1;
    while d < 8 && v >> (4 * d) != 0 {
        d += 1;
    }
    d
}

/// [`lose_track`] for a request already counted in `requests`.
#[inline(always)]
fn lose_track_counted(
    st: &mut SockState,
    totals: &mut Totals,
    why: Passthrough,
    size: u32,
) -> Verdict {
    dynamic::atomic_sub(ptr::addr_of_mut!(totals.requests), 1);
    lose_track(st, totals, why, size)
}

/// Counts a request (or head) as held from now on, and notes who sent it since when.
#[inline(always)]
fn hold(msg: *mut sk_msg_md, st: &SockState, totals: &mut Totals, total: u32, phase: u32) {
    dynamic::atomic_add(ptr::addr_of_mut!(totals.corked), 1);
    let held = Held {
        since_ns: unsafe { bpf_ktime_get_ns() },
        pid_tgid: unsafe { bpf_get_current_pid_tgid() },
        total,
        local_port: unsafe { (*msg).local_port },
        remote_port: u32::from_be(unsafe { (*msg).remote_port }),
        phase,
    };
    let _ = HELD.insert(st.cookie, held, 0);
}

/// Counts the held request as no longer held.
#[inline(always)]
fn release(st: &SockState, totals: &mut Totals) {
    dynamic::atomic_add(ptr::addr_of_mut!(totals.uncorked), 1);
    let _ = HELD.remove(st.cookie);
}

/// A head held for more bytes is complete now (or never will be): no longer held.
#[inline(always)]
fn release_head(st: &mut SockState, totals: &mut Totals) {
    if st.phase == PHASE_HEAD {
        st.phase = PHASE_IDLE;
        release(st, totals);
    }
}

#[inline(always)]
fn corked(size: u32, st: &mut SockState, control: &Control, totals: &mut Totals) -> Next {
    st.phase = PHASE_IDLE;
    release(st, totals);
    let total = st.total;
    if size < total {
        // The kernel ran out of cork space and runs us on part of the request: the verdict on
        // these bytes is final, so the whole request passes.
        return Next::Verdict(pass(totals, Passthrough::Partial, total));
    }
    if control.enabled == 0 {
        return Next::Verdict(pass(totals, Passthrough::Disabled, total));
    }
    Next::Walk(st)
}

// ------------------------------------------------------------------------------------------
// Walking and editing one whole request

/// The walk loop's context. It never changes during the loop (the walk's state is in socket
/// storage), so the verifier checks the callback once.
#[repr(C)]
struct WalkCtx {
    st: *mut SockState,
    src: Window,
    env: KernelEnv,
}

const WALK_RUNNING: i32 = 0;
const WALK_DONE: i32 = 1;
/// `walk_cb`'s outcome of a walk that stopped at [`Error::Enrich`] (the other failures are -1
/// to -4; `rechunk`'s own are -5 to -7).
const WALK_ENRICH: i32 = -8;
extern "C" fn walk_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut WalkCtx) };
    let w = unsafe { &mut (*c.st).walk };
    match walk::step(w, &mut c.src, &mut c.env) {
        Step::More => 0,
        Step::Done => {
            w.outcome = WALK_DONE;
            1
        }
        Step::Failed(e) => {
            w.outcome = match e {
                Error::Malformed => -1,
                Error::Unreadable => -2,
                Error::EditLimit => -3,
                Error::TooDeep => -4,
                Error::Enrich => WALK_ENRICH,
            };
            1
        }
    }
}

extern "C" fn decide_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut WalkCtx) };
    let w = unsafe { &mut (*c.st).walk };
    if walk::decide_step(w, &mut c.env) {
        0
    } else {
        1
    }
}

extern "C" fn apply_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let src = unsafe { &mut *(ctx as *mut Window) };
    let w = unsafe { &mut (*src.st).walk };
    if walk::apply_step(w, src) { 0 } else { 1 }
}

/// Walks the request the socket's state describes, applies the plan, and counts. Not inlined:
/// one call site, so the verifier checks the walk once.
#[inline(never)]
fn walk_request(msg: *mut sk_msg_md, st: *mut SockState) -> u64 {
    let Some(totals) = TOTALS.get_ptr_mut(0) else {
        return pack(WHOLE);
    };
    let totals = unsafe { &mut *totals };
    let st = unsafe { &mut *st };
    pack(walk_request_inner(msg, st, totals))
}

#[inline(always)]
fn walk_request_inner(msg: *mut sk_msg_md, st: &mut SockState, totals: &mut Totals) -> Verdict {
    let total = st.total;
    let slot = st.slot & 1;
    let Some(rs) = RULESETS.get(slot) else {
        return pass(totals, Passthrough::Other, total);
    };
    let generation = st.generation;
    if slot_generation(rs) != generation {
        return pass(totals, Passthrough::Generation, total);
    }
    dynamic::atomic_add(ptr::addr_of_mut!(totals.log_requests), 1);
    // Best effort: one linear copy of the request makes every later window pull free. If the
    // kernel can't allocate it, the walk pulls window by window.
    unsafe { bpf_msg_pull_data(msg, 0, total, 0) };
    st.walk
        .start(st.body_start, st.body_end, st.cl_off, st.cl_digits);
    st.walk.cl_hex = st.cl_hex;
    if rs.enrich != 0 {
        dt_enrich(&mut st.walk, rs.enrich as u64);
    }
    if rs.needs & NEED_GROUPS != 0 && groups::notes_of(msg, true).is_null() {
        return pass(totals, Passthrough::Other, total);
    }
    let st_ptr: *mut SockState = st;
    let mut wc = WalkCtx {
        st: st_ptr,
        src: Window::new(msg, st_ptr, total),
        env: KernelEnv { rs, slot, msg },
    };
    // Several chunks: walked rewritten as one chunk, their bytes as sent kept in a buffer.
    let r = rechunk::prepare(msg, st_ptr);
    if r < 0 {
        return abandon(totals, multi_why(r), total);
    }
    unsafe { (*st_ptr).walk.outcome = WALK_RUNNING };
    unsafe {
        bpf_loop(
            MAX_STEPS,
            walk_cb as *mut c_void,
            ptr::from_mut(&mut wc).cast(),
            0,
        );
    }
    // A request of several chunks that the walk leaves unchanged gets its bytes as sent back
    // in `conclude`: its grouped matches are counted before, while the walk's offsets still
    // hold (the copy back does not fail once the walk is done).
    let unchanged_multi = unsafe {
        (*st_ptr).multi != 0 && (*st_ptr).walk.outcome == WALK_DONE && !(*st_ptr).walk.changes()
    };
    if unchanged_multi && slot_generation(rs) == generation {
        groups::count(msg, st_ptr, rs, unsafe { (*st_ptr).total });
    }
    let outcome = rechunk::conclude(msg, st_ptr, rs);
    if outcome != WALK_DONE as i64 {
        return abandon(totals, multi_why(outcome), total);
    }
    // A request rewritten as one chunk is shorter now.
    let st = unsafe { &mut *st_ptr };
    let now = st.total;
    // The agent marks a slot with generation 0 before rewriting it: a walk that overlapped a
    // rewrite is thrown away, counters untouched.
    if slot_generation(rs) != generation {
        return abandon_at(totals, Passthrough::Generation, total, now);
    }
    if st.walk.changes() {
        // Make every length prefix and the Content-Length reachable before the first pop, so
        // that once removing starts, every rewrite succeeds.
        let mut src = Window::new(msg, st_ptr, now);
        if !reach_fixes(&mut src) {
            return abandon_at(totals, Passthrough::PullFailed, total, now);
        }
        // From here on the request commits: decide the sample and rate_limit candidates.
        walk::decide_start(unsafe { &mut (*st_ptr).walk });
        if unsafe { (*st_ptr).walk.n_cands } > 0 {
            unsafe {
                bpf_loop(
                    DECIDE_STEPS,
                    decide_cb as *mut c_void,
                    ptr::from_mut(&mut wc).cast(),
                    0,
                );
            }
        }
        // Recorders keep what the rules remove, and grouped counters count what the rules
        // matched, before the pops change the request.
        if rs.needs & NEED_RECORD != 0 && unsafe { (*st_ptr).walk.records_dropped } > 0 {
            record::record(msg, st_ptr, rs, now);
        }
        groups::count(msg, st_ptr, rs, now);
        walk::apply_start(unsafe { &mut (*st_ptr).walk });
        unsafe {
            bpf_loop(
                APPLY_STEPS,
                apply_cb as *mut c_void,
                ptr::from_mut(&mut src).cast(),
                0,
            );
        }
    } else if !unchanged_multi {
        groups::count(msg, st_ptr, rs, now);
    }
    let w = unsafe { &(*st_ptr).walk };
    commit(rs, w, totals);
    let out = now - w.removed - w.head_removed + w.added + w.shift;
    if w.removed > 0 || w.added > 0 {
        // Pops leave the request in many scatterlist pieces, each sent as its own TCP segment;
        // one linear copy sends it in as few as possible (best effort: on failure it goes as is).
        unsafe { bpf_msg_pull_data(msg, 0, out, 0) };
    }
    dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_in), total as u64);
    dynamic::atomic_add(ptr::addr_of_mut!(totals.bytes_out), out as u64);
    (out, 0)
}

extern "C" fn reach_fix_cb(i: u64, ctx: *mut c_void) -> i64 {
    let src = unsafe { &mut *(ctx as *mut Window) };
    let w = unsafe { &(*src.st).walk };
    let i = i as usize;
    if i >= w.n_fixes as usize {
        // Last, the Content-Length digits.
        let (off, len) = (w.cl_off, w.cl_digits);
        if len != 0 && !src.reach(off, len) {
            src.state().failed = 1;
        }
        return 1;
    }
    let f = w.fixes[i % MAX_FIXES];
    if !src.reach(f.off, f.len as u32) {
        src.state().failed = 1;
        return 1;
    }
    0
}

/// Passes through a request whose walk was abandoned: nothing was taken or counted for it
/// (sample numbers and tokens are taken only once a request commits, counters after it).
#[inline(always)]
fn abandon(totals: &mut Totals, why: Passthrough, total: u32) -> Verdict {
    pass(totals, why, total)
}

/// [`abandon`] for a request of `total` bytes that is `now` bytes long: a request of several
/// chunks rewritten as one before the walk was given up (same data, framed as one chunk).
#[inline(always)]
fn abandon_at(totals: &mut Totals, why: Passthrough, total: u32, now: u32) -> Verdict {
    let v = pass(totals, why, total);
    dynamic::atomic_sub(ptr::addr_of_mut!(totals.bytes_out), (total - now) as u64);
    (now, v.1)
}

/// The generation a rule set slot holds now, read from memory every time (the agent changes it
/// under us; a plain read could be folded into an earlier one).
#[inline(always)]
fn slot_generation(rs: &RuleSet) -> u64 {
    // SAFETY: an aligned u64 of a map value.
    unsafe { ptr::read_volatile(&rs.generation) }
}

/// Why a walk (of a request of one chunk or several) did not succeed.
#[inline(always)]
fn multi_why(outcome: i64) -> Passthrough {
    match outcome {
        -1 => Passthrough::Malformed,
        -2 | rechunk::MULTI_PULL => Passthrough::PullFailed,
        -3 => Passthrough::EditLimit,
        -4 => Passthrough::TooDeep,
        x if x == WALK_ENRICH as i64 => Passthrough::Enrich,
        rechunk::MULTI_GENERATION => Passthrough::Generation,
        rechunk::MULTI_BUSY => Passthrough::Chunked,
        _ => Passthrough::Other,
    }
}

/// Pulls every length prefix to rewrite, and the Content-Length digits.
#[inline(always)]
fn reach_fixes(src: &mut Window) -> bool {
    unsafe {
        bpf_loop(
            MAX_FIXES as u32 + 1,
            reach_fix_cb as *mut c_void,
            ptr::from_mut(src).cast(),
            0,
        )
    };
    src.state().failed == 0
}

/// Adds one request's per-rule results and totals to the per-CPU counters.
#[inline(always)]
fn commit(rs: &RuleSet, w: &walk::Walk, totals: &mut Totals) {
    let n = rs.n_rules as usize;
    let mut i = 0usize;
    while i < MAX_RULES {
        if i >= n {
            break;
        }
        let (Some(a), Some(r)) = (w.acc.get(i), rs.rules.get(i)) else {
            break;
        };
        if a.matched != 0
            && let Some(c) = RULE_COUNTERS.get_ptr_mut(r.slot as u32)
        {
            {
                let c = unsafe { &mut *c };
                dynamic::atomic_add(ptr::addr_of_mut!(c.matched), a.matched as u64);
                dynamic::atomic_add(ptr::addr_of_mut!(c.kept), a.kept as u64);
                dynamic::atomic_add(ptr::addr_of_mut!(c.dropped), a.dropped as u64);
                dynamic::atomic_add(ptr::addr_of_mut!(c.dropped_bytes), a.dropped_bytes);
                dynamic::atomic_add(ptr::addr_of_mut!(c.redacted), a.redacted as u64);
            }
        }
        i += 1;
    }
    dynamic::atomic_add(ptr::addr_of_mut!(totals.records), w.records as u64);
    dynamic::atomic_add(
        ptr::addr_of_mut!(totals.records_dropped),
        w.records_dropped as u64,
    );
    dynamic::atomic_add(ptr::addr_of_mut!(totals.walk_steps), w.steps as u64);
    dynamic::atomic_add(
        ptr::addr_of_mut!(totals.fast_records),
        w.fast_records as u64,
    );
    dynamic::atomic_add(
        ptr::addr_of_mut!(totals.edit_failures),
        w.edit_failures as u64,
    );
}

// ------------------------------------------------------------------------------------------
// The message as the walker sees it

/// A window of the message made directly readable with `bpf_msg_pull_data`. Its bounds live
/// in the socket's state (opaque map memory to the verifier, so loops over it converge fast),
/// and packet pointers are never kept across calls: every access re-reads `data`/`data_end`.
#[repr(C)]
struct Window {
    msg: *mut sk_msg_md,
    /// The socket's state; only its `win` field is touched through the window.
    st: *mut SockState,
}

impl Window {
    /// A window over the first `limit` bytes of the message, nothing readable yet.
    #[inline(always)]
    fn new(msg: *mut sk_msg_md, st: *mut SockState, limit: u32) -> Self {
        let mut w = Window { msg, st };
        let s = w.state();
        s.start = 0;
        s.end = 0;
        s.limit = limit;
        s.failed = 0;
        w
    }

    #[inline(always)]
    fn state(&mut self) -> &mut WinState {
        // SAFETY: `st` is this socket's storage, valid for the whole program run, and only this
        // run (the socket lock is held) touches it; nothing else borrows its `win` field.
        unsafe { &mut *ptr::addr_of_mut!((*self.st).win) }
    }

    /// Copies the `len` (1 to `N`) bytes at `off` into `dst` with one helper call, from the
    /// window (pulled to start at `off` if they are not in it).
    #[inline(always)]
    fn copy_out<const N: usize>(&mut self, off: u32, len: u32, dst: &mut [u8; N]) -> bool {
        if len > N as u32 || !self.ensure(off, len) {
            return false;
        }
        let msg = self.msg;
        let s = self.state();
        let start = s.start;
        if off < start || off + len > s.end {
            return false;
        }
        let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
        let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
        let p = data + ((off - start) & (WINDOW - 1)) as usize;
        if p + len as usize > data_end {
            return false;
        }
        let ret =
            unsafe { bpf_probe_read_kernel(dst.as_mut_ptr().cast(), len, p as *const c_void) };
        ret == 0
    }

    /// Makes `off..off + len` (len <= MASK_CHUNK) directly accessible, exactly.
    #[inline(always)]
    fn reach(&mut self, off: u32, len: u32) -> bool {
        let msg = self.msg;
        let s = self.state();
        if len == 0 || len > walk::MASK_CHUNK || off + len > s.limit {
            return false;
        }
        if unsafe { bpf_msg_pull_data(msg, off, off + len, 0) } != 0 {
            s.start = 0;
            s.end = 0;
            return false;
        }
        s.start = off;
        s.end = off + len;
        true
    }
}

impl Source for Window {
    #[inline(always)]
    fn ensure(&mut self, off: u32, len: u32) -> bool {
        let msg = self.msg;
        let s = self.state();
        let limit = s.limit;
        if off >= limit {
            // Nothing there to read; `byte` will say so.
            return true;
        }
        let want_end = if limit - off > len { off + len } else { limit };
        if off >= s.start && want_end <= s.end {
            return true;
        }
        let end = if limit - off > WINDOW {
            off + WINDOW
        } else {
            limit
        };
        if unsafe { bpf_msg_pull_data(msg, off, end, 0) } != 0 {
            s.failed = 1;
            s.start = 0;
            s.end = 0;
            return false;
        }
        s.start = off;
        s.end = end;
        true
    }

    #[inline(always)]
    fn zero_key(&mut self, dst: &mut [u8; STR_KEY_BYTES]) {
        // One copy from a block of zeros: a memset without a store per byte.
        unsafe {
            bpf_probe_read_kernel(
                dst.as_mut_ptr().cast(),
                STR_KEY_BYTES as u32,
                ptr::from_ref(&ZEROS).cast(),
            )
        };
    }

    #[inline(always)]
    fn copy_into(&mut self, off: u32, len: u32, dst: &mut [u8; STR_KEY_BYTES], at: u32) -> bool {
        // Keys are at most 64 bytes and values 128 (the rules' limits), so `at + len` stays
        // within the key, as the verifier can see from the two bounds.
        if at > 64 || len > 128 || !self.ensure(off, len) {
            return false;
        }
        let msg = self.msg;
        let s = self.state();
        let start = s.start;
        if off < start || off + len > s.end {
            return false;
        }
        let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
        let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
        let p = data + ((off - start) & (WINDOW - 1)) as usize;
        if p + len as usize > data_end {
            return false;
        }
        // One copy out of the packet window (bytes the window just made reachable).
        let ret = unsafe {
            bpf_probe_read_kernel(
                dst.as_mut_ptr().add(at as usize).cast(),
                len & 0xff,
                p as *const c_void,
            )
        };
        ret == 0
    }

    #[inline(always)]
    fn copy_chunk(&mut self, off: u32, len: u32, dst: &mut [u8; CHUNK_BYTES]) -> bool {
        self.copy_out(off, len, dst)
    }

    #[inline(always)]
    fn copy_record(&mut self, off: u32, len: u32, dst: &mut [u8; RECORD_BYTES]) -> bool {
        // An empty record has nothing to copy (and a copy of 0 bytes is refused).
        len == 0 || self.copy_out(off, len, dst)
    }

    #[inline(always)]
    fn byte(&mut self, off: u32) -> Option<u8> {
        let msg = self.msg;
        let s = self.state();
        let start = s.start;
        if off < start || off >= s.end {
            return None;
        }
        let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
        let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
        let p = data + ((off - start) & (WINDOW - 1)) as usize;
        if p + 1 > data_end {
            return None;
        }
        Some(unsafe { *(p as *const u8) })
    }
}

impl Editor for Window {
    #[inline(always)]
    fn pop(&mut self, off: u32, len: u32) -> bool {
        let msg = self.msg;
        let s = self.state();
        s.start = 0;
        s.end = 0;
        if unsafe { bpf_msg_pop_data(msg, off, len, 0) } != 0 {
            return false;
        }
        s.limit -= len;
        true
    }

    #[inline(always)]
    fn push(&mut self, off: u32, len: u32) -> bool {
        let msg = self.msg;
        let s = self.state();
        s.start = 0;
        s.end = 0;
        if off > s.limit || unsafe { bpf_msg_push_data(msg, off, len, 0) } != 0 {
            return false;
        }
        s.limit += len;
        true
    }

    #[inline(always)]
    fn reach(&mut self, off: u32, len: u32) -> bool {
        Window::reach(self, off, len)
    }

    #[inline(always)]
    fn put(&mut self, off: u32, b: u8) {
        let msg = self.msg;
        let start = self.state().start;
        let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
        let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
        let p = data + (off.wrapping_sub(start) & (walk::MASK_CHUNK - 1)) as usize;
        if p + 1 > data_end {
            return;
        }
        unsafe { *(p as *mut u8) = b };
    }
}

/// The rule set as the walker sees it.
#[repr(C)]
struct KernelEnv {
    rs: &'static RuleSet,
    slot: u32,
    /// The message: its socket holds the grouped-match notes. (The notes' pointer is not kept
    /// here: a context that holds a pointer on one way and null on another has the verifier
    /// check the whole walk twice.)
    msg: *mut sk_msg_md,
}

impl Env for KernelEnv {
    #[inline(always)]
    fn rules(&self) -> &RuleSet {
        self.rs
    }

    #[inline(always)]
    fn slot(&self) -> u8 {
        self.slot as u8
    }

    #[inline(always)]
    fn lookup(&mut self, key: &StrKey) -> u64 {
        unsafe { STRINGS.get(key) }.copied().unwrap_or(0)
    }

    #[inline(always)]
    fn draw_samples(&mut self, slot: u16, m: u32, n: u64) -> u64 {
        let Some(p) = SAMPLES.get_ptr_mut(slot as u32) else {
            return 0;
        };
        match atomic_update(p, |k| decide::sample_draw(k, m, n).0) {
            Some(k) => decide::sample_draw(k, m, n).1,
            // Lost every race against other CPUs drawing for the same rule (never seen): keep
            // the first match of the request.
            None => 0,
        }
    }

    #[inline(always)]
    fn take_tokens(&mut self, slot: u16, per_second: u64, m: u32) -> u32 {
        let Some(p) = RATES.get_ptr_mut(slot as u32) else {
            return m;
        };
        let now = unsafe { bpf_ktime_get_ns() };
        match atomic_update(p, |tat| decide::gcra_take(tat, now, per_second, m).0) {
            Some(tat) => decide::gcra_take(tat, now, per_second, m).1,
            // Lost every race: others are taking tokens right now; this request finds none.
            None => 0,
        }
    }

    #[inline(always)]
    fn states(&mut self, which: u64, out: &mut u64) {
        dynamic::states_on(which, out)
    }

    #[inline(always)]
    fn trigger(&mut self, slot: u16, trigger: &Trigger) {
        dynamic::trigger(slot, trigger);
    }

    #[inline(always)]
    fn parse_record(&mut self, w: &mut walk::Walk, len: u32) -> bool {
        dt_fast_record(w, self.rs, len as u64) != 0
    }

    #[inline(always)]
    fn fast_lookups(&mut self, w: &mut walk::Walk) {
        dt_fast_lookups(w, self.rs, self.slot as u64);
    }

    #[inline(always)]
    fn group_notes(&mut self, w: &mut walk::Walk) -> bool {
        let notes = groups::notes_of(self.msg, false);
        !notes.is_null() && dt_group_notes(w, self.rs, notes) != 0
    }

    #[inline(always)]
    fn ac_table(&self) -> Option<&AcTable> {
        AC_FLAT.get(self.slot)
    }

    #[inline(always)]
    fn scan_chunk(&mut self, w: &mut walk::Walk, n: u32) -> bool {
        dt_scan_chunk(w, self.rs, self.slot as u64, n as u64) != 0
    }
}

/// The record fast path's parse ([`walk::parse_record`]) as a global BPF function (exported by
/// the linker, see build.rs): the verifier checks it once, on its own, instead of inside every
/// way through the walk's step; one call of [`walk::parse_field`] (a field and the plain ones
/// after it) a `bpf_loop` iteration, so it checks one call's ways (until they repeat), not each
/// of 24 calls'.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_fast_record(w: *mut walk::Walk, rs: *const RuleSet, len: u64) -> u64 {
    if w.is_null() || rs.is_null() {
        return 0;
    }
    // The length goes in the walk: a smaller context leaves the call chain's stack in bounds.
    let mut c = ParseCtx { w, rs };
    // SAFETY: checked non-null; the verifier checks every access against the sizes.
    walk::parse_begin(unsafe { &mut *w }, len as u32);
    unsafe {
        bpf_loop(
            walk::FAST_FIELDS,
            parse_cb as *mut c_void,
            ptr::from_mut(&mut c).cast(),
            0,
        );
    }
    walk::parse_end(unsafe { &*w }, len as u32) as u64
}

#[repr(C)]
struct ParseCtx {
    w: *mut walk::Walk,
    rs: *const RuleSet,
}

extern "C" fn parse_cb(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the context `dt_fast_record` passes, its pointers checked non-null.
    let c = unsafe { &mut *(ctx as *mut ParseCtx) };
    let (w, rs) = unsafe { (&mut *c.w, &*c.rs) };
    let len = unsafe { ptr::read_volatile(&w.f_len) };
    if walk::parse_field(w, rs, len) { 0 } else { 1 }
}

/// `ATTR_HASHES` as the record fast path's lookups read it.
struct KernelHashes;

impl walk::Hashes for KernelHashes {
    #[inline(always)]
    fn hash_entry(&mut self, key: &HashKey) -> Option<&HashEntry> {
        // SAFETY: a map value, only read.
        unsafe { ATTR_HASHES.get(key) }
    }
}

/// `[enrich]`: encodes the attributes of `want` the sender has values for, as a global BPF
/// function, checked once on its own (and leaving the walk's callers one state, not one a way
/// through the encoding). The sender is the task sending now: its pid, its cgroup.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_enrich(w: *mut walk::Walk, want: u64) -> u64 {
    if w.is_null() {
        return 0;
    }
    let pid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    walk::prepare_enrich(
        unsafe { &mut *w },
        want as u32,
        pid,
        ENRICH_HOST.get(0),
        unsafe { CGROUP_IDS.get(cgroup) },
    );
    1
}

/// The notes of a record's grouped matches ([`walk::note_groups`]) as a global BPF function,
/// checked once on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_group_notes(
    w: *mut walk::Walk,
    rs: *const RuleSet,
    notes: *mut GroupNotes,
) -> u64 {
    if w.is_null() || rs.is_null() || notes.is_null() {
        return 0;
    }
    let (w, rs) = unsafe { (&*w, &*rs) };
    walk::note_groups(w, rs, &mut NoteSink(notes)) as u64
}

struct NoteSink(*mut GroupNotes);

impl walk::GroupSink for NoteSink {
    #[inline(always)]
    fn push(&mut self, note: &GroupNote) -> bool {
        let p = self.0;
        let n = unsafe { (*p).n } as usize;
        if n >= MAX_GROUP_NOTES {
            return false;
        }
        unsafe {
            (*p).notes[n % MAX_GROUP_NOTES] = *note;
            (*p).n = n as u32 + 1;
        }
        true
    }
}

/// The record fast path's lookups ([`walk::fast_lookups`]) as a global BPF function, checked
/// once on its own: one lookup of one noted attribute a `bpf_loop` iteration (each hashes and
/// compares up to 192 bytes), as many as the record needs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_fast_lookups(w: *mut walk::Walk, rs: *const RuleSet, slot: u64) -> u64 {
    if w.is_null() || rs.is_null() {
        return 0;
    }
    let mut c = LookCtx { w, rs, slot };
    unsafe {
        bpf_loop(
            walk::FAST_LOOKUP_STEPS as u32,
            lookup_cb as *mut c_void,
            ptr::from_mut(&mut c).cast(),
            0,
        );
    }
    1
}

#[repr(C)]
struct LookCtx {
    w: *mut walk::Walk,
    rs: *const RuleSet,
    slot: u64,
}

extern "C" fn lookup_cb(k: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the context `dt_fast_lookups` passes, its walk checked non-null.
    let c = unsafe { &mut *(ctx as *mut LookCtx) };
    let (w, rs) = unsafe { (&mut *c.w, &*c.rs) };
    walk::fast_lookup(w, rs, k as usize, c.slot as u8, &mut KernelHashes);
    // The loop stops after the steps the record needs (a count the verifier would have to
    // follow costs it more than a stop).
    (k + 1 >= walk::fast_lookup_steps(w) as u64) as i64
}

/// The body scan of one chunk ([`walk::scan_chunk`]) as a global BPF function: its loops over
/// 64 bytes are checked once, on their own, not inside every way through the walk's step.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_scan_chunk(w: *mut walk::Walk, rs: *const RuleSet, slot: u64, n: u64) -> u64 {
    if w.is_null() || rs.is_null() {
        return 0;
    }
    let Some(t) = AC_FLAT.get(slot as u32) else {
        return 0;
    };
    // SAFETY: checked non-null; the verifier checks every access against the sizes.
    let (w, rs) = unsafe { (&mut *w, &*rs) };
    walk::scan_chunk(w, rs, t, n as u32);
    1
}

/// One byte of a request's head ([`http::Head::feed`]) as a global BPF function: the parser's
/// many ways through a byte are checked once, on their own, not once for each byte of a
/// `head_cb` chunk. 1 when the head is done (complete or bad).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_head_feed(head: *mut http::Head, off: u64, b: u64) -> u64 {
    if head.is_null() {
        return 1;
    }
    // SAFETY: checked non-null: the socket's head parser (socket storage).
    let head = unsafe { &mut *head };
    (head.feed(off as u32, b as u8) == Feed::Done) as u64
}
