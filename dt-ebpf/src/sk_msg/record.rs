//! Recording: once a request commits, the records removed by rules that name a recorder are
//! copied, oldest first, into the recorder's ring, before the pops remove them.
//!
//! A ring is an array of [`RING_BLOCK`]-byte blocks (an inner map of `RECORDERS`); byte `p` of
//! the endless stream of entries is at ring byte `p % size`. A CPU reserves an entry's bytes
//! by moving the ring's head on with compare-exchange, so entries of every CPU have one order.
//! An entry is `[base + 1, len | rec_len << 32, svc_len | rule slot << 32]`, the service name,
//! the LogRecord's bytes, padding to 8, and a trailer word `base`. The first word is written
//! last: the agent reads an entry only once it is there, and only while `base` is at least the
//! head minus the size (nothing newer has overwritten it). See the README's "Recorders".

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::sk_msg_md,
    helpers::generated::{bpf_loop, bpf_probe_read_kernel},
};
use dt_ebpf_common::{
    ENTRY_HEADER, MAX_EDITS, MAX_RECORD_SERVICE, MAX_RECORDERS, MAX_RULES, RING_BLOCK, RING_PIECE,
    RecCounters, RuleSet, SockState, entry_len, wire::Source,
};

use super::{WINDOW, Window};
use crate::{
    dynamic::{self, atomic_update},
    maps::{REC_CONF, REC_COUNTERS, REC_STATE, RECORDERS},
};

const P_EDIT: u32 = 0;
const P_RECORD: u32 = 1;
const P_SVC: u32 = 2;
const P_BODY: u32 = 3;

/// Upper bound on recording steps: each edit, each record's start, and its pieces.
const RECORD_STEPS: u32 = 1 << 16;

#[repr(C)]
struct RecordCtx {
    src: Window,
    rs: &'static RuleSet,
}

/// Records the removed records of a request that commits (the plan is decided, nothing applied
/// yet). Never changes the request; what can't be recorded is counted `lost`.
#[inline(always)]
pub(super) fn record(msg: *mut sk_msg_md, st: *mut SockState, rs: &'static RuleSet, limit: u32) {
    let mut c = RecordCtx {
        src: Window::new(msg, st, limit),
        rs,
    };
    // SAFETY: the socket's storage, held for the whole run.
    let r = unsafe { &mut (*st).rec };
    r.edit = 0;
    r.phase = P_EDIT;
    unsafe {
        bpf_loop(
            RECORD_STEPS,
            record_cb as *mut c_void,
            ptr::from_mut(&mut c).cast(),
            0,
        );
    }
}

extern "C" fn record_cb(_i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut RecordCtx) };
    let st = c.src.st;
    // SAFETY: as in `record`.
    let r = unsafe { &mut (*st).rec };
    match r.phase {
        P_EDIT => next_edit(c),
        P_RECORD => next_record(c),
        _ => {
            copy_piece(c);
            0
        }
    }
}

fn counters(recorder: u32) -> Option<&'static mut RecCounters> {
    REC_COUNTERS
        .get_ptr_mut(recorder)
        .map(|p| unsafe { &mut *p })
}

/// Moves to the next edit that removes records of a rule with a recorder; 1 when none is left.
#[inline(always)]
fn next_edit(c: &mut RecordCtx) -> i64 {
    let st = c.src.st;
    let (w, r) = unsafe { (&(*st).walk, &mut (*st).rec) };
    let k = r.edit as usize;
    if k >= w.n_edits as usize || k >= MAX_EDITS {
        return 1;
    }
    r.edit += 1;
    let e = w.edits[k];
    if e.records == 0 || e.len == 0 {
        return 0;
    }
    let rule = &c.rs.rules[e.rule as usize % MAX_RULES];
    if rule.recorder == 0 {
        return 0;
    }
    if e.matched_redact() {
        // A redact rule matched these records first: a copy would leave unredacted.
        if let Some(k) = counters((rule.recorder - 1) as u32) {
            dynamic::atomic_add(ptr::addr_of_mut!(k.lost), e.records as u64);
        }
        return 0;
    }
    r.recorder = (rule.recorder - 1) as u32;
    r.rule_slot = rule.slot as u32;
    r.pos = e.off;
    r.end = e.off + e.len;
    r.svc_off = e.svc_off;
    r.svc_len = if e.svc_len > MAX_RECORD_SERVICE {
        MAX_RECORD_SERVICE
    } else {
        e.svc_len
    };
    r.phase = P_RECORD;
    0
}

/// Reads a varint of at most 5 bytes at `off`: (value, length); length 0 on failure.
#[inline(always)]
fn varint32(src: &mut Window, off: u32) -> (u32, u32) {
    let mut v = 0u32;
    let mut i = 0u32;
    while i < 5 {
        let Some(b) = src.byte(off + i) else {
            return (0, 0);
        };
        v |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return (v, i + 1);
        }
        i += 1;
    }
    (0, 0)
}

/// Starts the entry of the next record of the edit: reads its tag and length, checks its size,
/// reserves its ring bytes and writes the header's length words.
#[inline(always)]
fn next_record(c: &mut RecordCtx) -> i64 {
    let st = c.src.st;
    let r = unsafe { &mut (*st).rec };
    if r.pos >= r.end {
        r.phase = P_EDIT;
        return 0;
    }
    let pos = r.pos;
    let recorder = r.recorder;
    if !c.src.ensure(pos, 16) {
        r.phase = P_EDIT;
        lost(recorder);
        return 0;
    }
    let (_, tl) = varint32(&mut c.src, pos);
    let (len, ll) = varint32(&mut c.src, pos + tl);
    if tl == 0 || ll == 0 {
        r.phase = P_EDIT;
        lost(recorder);
        return 0;
    }
    let r = unsafe { &mut (*st).rec };
    r.rec_off = pos + tl + ll;
    r.rec_len = len;
    r.pos = r.rec_off + len;
    if recorder >= MAX_RECORDERS {
        return 0;
    }
    let Some(conf) = REC_CONF.get(recorder) else {
        return 0;
    };
    let (size, max_record) = (conf.size, conf.max_record);
    if len > max_record {
        if let Some(k) = counters(recorder) {
            dynamic::atomic_add(ptr::addr_of_mut!(k.too_long), 1);
        }
        return 0;
    }
    if size < RING_BLOCK as u64 {
        lost(recorder);
        return 0;
    }
    let n = entry_len(r.svc_len, len) as u64;
    let Some(head) = REC_STATE.get_ptr_mut(recorder) else {
        return 0;
    };
    let Some(base) = atomic_update(unsafe { ptr::addr_of_mut!((*head).head) }, |h| h + n) else {
        lost(recorder);
        return 0;
    };
    r.size = size;
    r.base = base;
    r.n = n;
    let (rule_slot, svc_len) = (r.rule_slot, r.svc_len);
    if !put_word(recorder, size, base + 8, n | (len as u64) << 32)
        || !put_word(
            recorder,
            size,
            base + 16,
            svc_len as u64 | (rule_slot as u64) << 32,
        )
    {
        lost(recorder);
        return 0;
    }
    let r = unsafe { &mut (*st).rec };
    r.at = base + ENTRY_HEADER as u64;
    r.src = r.svc_off;
    r.left = r.svc_len;
    r.phase = P_SVC;
    0
}

fn lost(recorder: u32) {
    if let Some(k) = counters(recorder) {
        dynamic::atomic_add(ptr::addr_of_mut!(k.lost), 1);
    }
}

/// Writes the u64 `v` at stream position `at` (a multiple of 8) of a recorder's ring.
#[inline(always)]
fn put_word(recorder: u32, size: u64, at: u64, v: u64) -> bool {
    if size == 0 {
        return false;
    }
    let block = ((at % size) / RING_BLOCK as u64) as u32;
    let off = (at % RING_BLOCK as u64) as usize & (RING_BLOCK as usize - 8);
    let Some(b) = RECORDERS.get_value_ptr_mut(recorder, &block) else {
        return false;
    };
    // SAFETY: `off + 8 <= RING_BLOCK`, inside the block's bytes; an aligned store.
    unsafe { ptr::write_volatile((*b).bytes.as_mut_ptr().add(off) as *mut u64, v) };
    true
}

/// Copies one piece of the entry's service name or record into the ring; finishes the entry
/// after its last piece.
#[inline(always)]
fn copy_piece(c: &mut RecordCtx) {
    let st = c.src.st;
    let r = unsafe { &mut (*st).rec };
    let recorder = r.recorder;
    if r.left == 0 {
        if r.phase == P_SVC {
            r.phase = P_BODY;
            r.src = r.rec_off;
            r.left = r.rec_len;
            return;
        }
        // Trailer, then the first word: the entry is there.
        let (size, base, n) = (r.size, r.base, r.n);
        r.phase = P_RECORD;
        if put_word(recorder, size, base + n - 8, base) && put_word(recorder, size, base, base + 1)
        {
            if let Some(k) = counters(recorder) {
                dynamic::atomic_add(ptr::addr_of_mut!(k.records), 1);
                dynamic::atomic_add(ptr::addr_of_mut!(k.bytes), n);
            }
        } else {
            lost(recorder);
        }
        return;
    }
    let (src_off, at, size) = (r.src, r.at, r.size);
    if size == 0 {
        abandon(st, recorder);
        return;
    }
    let in_block = RING_BLOCK - (at % RING_BLOCK as u64) as u32;
    let mut piece = if r.left < RING_PIECE {
        r.left
    } else {
        RING_PIECE
    };
    if piece > in_block {
        piece = in_block;
    }
    if !c.src.ensure(src_off, piece) {
        abandon(st, recorder);
        return;
    }
    let s = c.src.state();
    let (start, end) = (s.start, s.end);
    if src_off < start || src_off >= end {
        abandon(st, recorder);
        return;
    }
    if src_off + piece > end {
        piece = end - src_off;
    }
    let msg = c.src.msg;
    let data = unsafe { (*msg).__bindgen_anon_1.data } as usize;
    let data_end = unsafe { (*msg).__bindgen_anon_2.data_end } as usize;
    let p = data + ((src_off - start) & (WINDOW - 1)) as usize;
    if p + piece as usize > data_end {
        abandon(st, recorder);
        return;
    }
    let block = ((at % size) / RING_BLOCK as u64) as u32;
    let off = (at % RING_BLOCK as u64) as usize & (RING_BLOCK as usize - 1);
    let Some(b) = RECORDERS.get_value_ptr_mut(recorder, &block) else {
        abandon(st, recorder);
        return;
    };
    let len = piece & (2 * RING_PIECE - 1);
    if len > RING_PIECE {
        abandon(st, recorder);
        return;
    }
    // SAFETY: `off < RING_BLOCK` and `len <= RING_PIECE`: inside the block's bytes, which have
    // RING_PIECE to spare; the source is inside the pulled window.
    let ret = unsafe {
        bpf_probe_read_kernel(
            (*b).bytes.as_mut_ptr().add(off).cast(),
            len,
            p as *const c_void,
        )
    };
    if ret != 0 {
        abandon(st, recorder);
        return;
    }
    let r = unsafe { &mut (*st).rec };
    r.at += len as u64;
    r.src += len;
    r.left -= len;
}

/// Gives up the entry being written (its first word never written: the agent skips it).
#[inline(always)]
fn abandon(st: *mut SockState, recorder: u32) {
    let r = unsafe { &mut (*st).rec };
    r.phase = P_RECORD;
    lost(recorder);
}
