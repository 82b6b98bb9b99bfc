//! The OTLP `ExportLogsServiceRequest` walker and its edit plan.
//!
//! The walker is a flat state machine: [`step`] does one bounded unit of work (one protobuf
//! field, or one chunk of a body scan), so the kernel drives it from a `bpf_loop` callback and
//! the host drives it from a plain loop. It reads through a [`Source`], evaluates the rule set
//! through an [`Env`], and records what to remove in the [`Walk`] itself. Nothing is changed
//! until the walk has finished: then [`apply_step`] applies the plan back to front through an
//! [`Editor`], fixing every enclosing length prefix and the Content-Length.
//!
//! Protobuf semantics followed, as real encoders produce them:
//! - fields in any order; unknown fields skipped by wire type;
//! - a ResourceLogs is walked twice: first for its `resource` (which may come after the
//!   ScopeLogs), then for its ScopeLogs;
//! - singular scalars repeated: the last one wins (severity_number);
//! - singular messages repeated are merged, so for `body` and attribute values the last oneof
//!   member set wins; for `service.name` the last occurrence wins;
//! - any structural error (bad wire type for a known field, a length past its parent, a varint
//!   over 10 bytes, group wire types, field number 0) stops the walk: the request passes through.

use crate::{
    ACTION_DROP, AcRow, MAX_ATTR_KEY_LEN, MAX_ATTR_VALUE_LEN, MAX_FIXES, MAX_POPS, MAX_RULES,
    MAX_SERVICE_LEN, Rule, RuleSet, SEV_OUT_OF_RANGE, STR_ATTR, STR_KEY_BYTES, STR_SERVICE, StrKey,
    wire::{Error, Source, varint},
};

/// What the walker needs from the rule set beyond the [`RuleSet`] itself.
pub trait Env {
    fn rules(&self) -> &RuleSet;
    /// The rule set slot (0 or 1) the rules come from; part of every [`StrKey`].
    fn slot(&self) -> u8;
    /// Condition bits set by a service name or attribute pair (0 when none).
    fn lookup(&mut self, key: &StrKey) -> u64;
    /// Aho-Corasick state `state` of the active slot.
    fn ac_row(&mut self, state: u32) -> Option<&AcRow>;
}

/// How the plan is applied to the message.
pub trait Editor {
    /// Removes `len` bytes at `off`. `false` when the kernel refused (the bytes stay).
    fn pop(&mut self, off: u32, len: u32) -> bool;
    /// Makes the `len` (at most 20) bytes at `off` writable. `false` when they can't be reached.
    fn reach(&mut self, off: u32, len: u32) -> bool;
    /// Overwrites the byte at `off`, inside the range last reached.
    fn put(&mut self, off: u32, b: u8);
}

// Frame kinds.
pub const K_REQ: u8 = 0;
pub const K_RL_SCAN: u8 = 1;
pub const K_RL: u8 = 2;
pub const K_RESOURCE: u8 = 3;
pub const K_SCOPE: u8 = 4;
pub const K_RECORD: u8 = 5;
pub const K_KV: u8 = 6;
pub const K_ANY: u8 = 7;

// Frame roles (for K_KV and K_ANY).
pub const R_NONE: u8 = 0;
pub const R_RESOURCE_ATTR: u8 = 1;
pub const R_RECORD_ATTR: u8 = 2;
pub const R_KV_VALUE: u8 = 3;
pub const R_BODY: u8 = 4;

// AnyValue kinds.
pub const V_NONE: u32 = 0;
pub const V_STRING: u32 = 1;
pub const V_OTHER: u32 = 2;

/// Walking fields of the current frame.
pub const MODE_FIELDS: u32 = 0;
/// The current frame has ended: act on it.
pub const MODE_END: u32 = 1;
/// Scanning the record's body for needles.
pub const MODE_BODY_SCAN: u32 = 2;
/// Evaluating the rules on the record just walked.
pub const MODE_EVAL: u32 = 3;
pub const MODE_DONE: u32 = 4;
/// A record attribute's key is in the lookup key: add its value, look the pair up, and end the
/// KeyValue frame.
pub const MODE_ATTR_VALUE: u32 = 5;

const NO_FIX: u8 = 0xff;
const DEPTH_MASK: u32 = 7;
/// Body bytes scanned per step.
pub const SCAN_CHUNK: u32 = 64;

#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Frame {
    /// First byte of the frame's contents, and one past the last.
    pub start: u32,
    pub end: u32,
    /// Offset and size of the length prefix that encodes `end - start`.
    pub prefix_off: u32,
    pub prefix_len: u8,
    pub kind: u8,
    pub role: u8,
    /// Index of this frame's entry in [`Walk::fixes`], once a record inside it is dropped.
    pub fix: u8,
}

/// A run of adjacent dropped records, all dropped by the same rule.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Pop {
    pub off: u32,
    pub len: u32,
    pub records: u32,
    /// Index of the dropping rule in the rule set.
    pub rule: u8,
    /// Fixes of the enclosing ScopeLogs and ResourceLogs.
    pub scope_fix: u8,
    pub rl_fix: u8,
    pub applied: u8,
}

/// A length prefix to rewrite once its container's pops are applied.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Fix {
    pub off: u32,
    /// The original length value.
    pub value: u32,
    /// Bytes removed inside the container so far.
    pub removed: u32,
    pub len: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Per-rule results of one request, committed to the counters once the request is done.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct RuleAcc {
    pub matched: u32,
    pub dropped: u32,
    pub dropped_bytes: u64,
}

/// The whole state of one walk. Large (kept in socket storage in the kernel, never on a BPF
/// stack).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Walk {
    pub mode: u32,
    pub pos: u32,
    pub depth: u32,
    /// Where the protobuf body starts and ends in the message.
    pub body_start: u32,
    pub body_end: u32,
    /// Content-Length digits in the head.
    pub cl_off: u32,
    pub cl_digits: u32,
    pub frames: [Frame; 8],

    // ResourceLogs being walked.
    pub svc_off: u32,
    pub svc_len: u32,
    /// 1 when the last `service.name` seen is a string.
    pub svc_set: u32,
    pub _pad1: u32,
    pub svc_bits: u64,

    // KeyValue being walked.
    pub key_off: u32,
    pub key_len: u32,
    pub key_set: u32,
    pub val_kind: u32,
    pub val_off: u32,
    pub val_len: u32,

    // LogRecord being walked (its tag is at `rec_off`; it ends at `rec_end`).
    pub rec_off: u32,
    pub rec_end: u32,
    pub sev: u32,
    pub body_kind: u32,
    pub body_off: u32,
    pub body_len: u32,
    pub attr_bits: u64,
    pub body_bits: u64,

    /// Scratch for [`launder`].
    pub scratch: u32,
    // Body scan.
    pub scan_pos: u32,
    pub scan_end: u32,
    pub ac_state: u32,

    // Results.
    pub records: u32,
    pub records_dropped: u32,
    pub bytes_dropped: u32,
    pub n_pops: u32,
    pub n_fixes: u32,
    /// Apply cursor: pops and fixes not yet applied (counting down).
    pub apply_pop: u32,
    pub apply_fix: u32,
    pub removed: u32,
    pub edit_failures: u32,
    /// Bytes removed from the head (Content-Length digits).
    pub head_removed: u32,
    pub pops: [Pop; MAX_POPS],
    pub fixes: [Fix; MAX_FIXES],
    pub acc: [RuleAcc; MAX_RULES],
    pub key: StrKey,
}

/// The outcome of one step.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    More,
    Done,
    Failed(Error),
}

impl Walk {
    /// Resets the walk for a body at `body_start..body_end`, with its Content-Length digits at
    /// `cl_off` (`cl_digits` long).
    pub fn start(&mut self, body_start: u32, body_end: u32, cl_off: u32, cl_digits: u32) {
        self.mode = MODE_FIELDS;
        self.pos = body_start;
        self.depth = 0;
        self.body_start = body_start;
        self.body_end = body_end;
        self.cl_off = cl_off;
        self.cl_digits = cl_digits;
        self.frames[0] = Frame {
            start: body_start,
            end: body_end,
            prefix_off: 0,
            prefix_len: 0,
            kind: K_REQ,
            role: R_NONE,
            fix: NO_FIX,
        };
        self.records = 0;
        self.records_dropped = 0;
        self.bytes_dropped = 0;
        self.n_pops = 0;
        self.n_fixes = 0;
        self.removed = 0;
        self.edit_failures = 0;
        self.head_removed = 0;
        let mut i = 0;
        while i < MAX_RULES {
            // Field by field: a block fill would become a memset call on the BPF target.
            let a = &mut self.acc[i];
            // SAFETY: plain stores to fields of `a`.
            unsafe {
                core::ptr::write_volatile(&mut a.matched, 0);
                core::ptr::write_volatile(&mut a.dropped, 0);
                core::ptr::write_volatile(&mut a.dropped_bytes, 0);
            }
            i += 1;
        }
    }

    #[inline(always)]
    fn frame(&self) -> Frame {
        self.frames[(self.depth & DEPTH_MASK) as usize]
    }

    #[inline(always)]
    fn push(&mut self, kind: u8, role: u8, start: u32, end: u32, prefix_off: u32, prefix_len: u32) {
        let d = self.depth + 1;
        if d > 6 {
            // Cannot happen: the grammar nests at most six deep.
            return;
        }
        self.depth = d;
        self.frames[(d & DEPTH_MASK) as usize] = Frame {
            start,
            end,
            prefix_off,
            prefix_len: prefix_len as u8,
            kind,
            role,
            fix: NO_FIX,
        };
        self.pos = start;
    }

    /// Allocates (once) the fix of the frame at depth `d`.
    #[inline(always)]
    fn fix_of(&mut self, d: u32) -> Option<u8> {
        let f = self.frames[(d & DEPTH_MASK) as usize];
        if f.fix != NO_FIX {
            return Some(f.fix);
        }
        let n = self.n_fixes;
        if n as usize >= MAX_FIXES {
            return None;
        }
        self.fixes[n as usize % MAX_FIXES] = Fix {
            off: f.prefix_off,
            value: f.end - f.start,
            removed: 0,
            len: f.prefix_len,
            _pad0: 0,
            _pad1: 0,
        };
        self.frames[(d & DEPTH_MASK) as usize].fix = n as u8;
        self.n_fixes = n + 1;
        Some(n as u8)
    }
}

/// Runs one step of the walk. Each step does one kind of bounded work, so that the verifier
/// sees short paths: one field, one frame end, one chunk of a body, or one rule evaluation.
#[inline(always)]
pub fn step<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Step {
    let r = match w.mode {
        MODE_FIELDS => field_step(w, s),
        MODE_END => end_frame(w, s, env),
        MODE_BODY_SCAN => scan_step(w, s, env),
        MODE_EVAL => evaluate(w, env),
        MODE_ATTR_VALUE => attr_value_step(w, s, env),
        _ => return Step::Done,
    };
    match r {
        Ok(()) if w.mode == MODE_DONE => Step::Done,
        Ok(()) => Step::More,
        Err(e) => Step::Failed(e),
    }
}

/// Runs a whole walk on the host.
pub fn run<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Result<(), Error> {
    loop {
        match step(w, s, env) {
            Step::More => {}
            Step::Done => return Ok(()),
            Step::Failed(e) => return Err(e),
        }
    }
}

const WT_VARINT: u64 = 0;
const WT_I64: u64 = 1;
const WT_LEN: u64 = 2;
const WT_I32: u64 = 5;

/// Passes `v` through memory. For the kernel's verifier, a value read back from map memory is
/// unknown, so the paths that computed different `v` (say, one per varint length) merge again
/// instead of multiplying through the rest of the step.
#[inline(always)]
fn launder(slot: &mut u32, v: u32) -> u32 {
    // SAFETY: a store to and a load from a valid `u32`.
    unsafe {
        core::ptr::write_volatile(slot, v);
        core::ptr::read_volatile(slot)
    }
}

/// Bytes made readable at the start of each field: a tag and a length or value varint.
const FIELD_READ: u32 = 20;

#[inline(always)]
fn field_step<S: Source>(w: &mut Walk, s: &mut S) -> Result<(), Error> {
    let f = w.frame();
    if w.pos >= f.end {
        if w.pos > f.end {
            return Err(Error::Malformed);
        }
        w.mode = MODE_END;
        return Ok(());
    }
    let tag_off = w.pos;
    if !s.ensure(tag_off, FIELD_READ) {
        return Err(Error::Unreadable);
    }
    let (tag, n) = varint(s, tag_off, f.end)?;
    let field = tag >> 3;
    let wt = tag & 7;
    if field == 0 || field > u32::MAX as u64 {
        return Err(Error::Malformed);
    }
    let at = launder(&mut w.scratch, tag_off + n);
    // Which (kind, field) pairs dt reads, and with which wire type.
    let known = known_wire_type(f.kind, field);
    if known != u64::MAX && known != wt {
        return Err(Error::Malformed);
    }
    match wt {
        WT_VARINT => {
            let (v, m) = varint(s, at, f.end)?;
            w.pos = launder(&mut w.scratch, at + m);
            on_scalar(w, f, field, Some(v));
        }
        WT_I64 => {
            if f.end - at < 8 {
                return Err(Error::Malformed);
            }
            w.pos = at + 8;
            on_scalar(w, f, field, None);
        }
        WT_I32 => {
            if f.end - at < 4 {
                return Err(Error::Malformed);
            }
            w.pos = at + 4;
            on_scalar(w, f, field, None);
        }
        WT_LEN => {
            let (len, m) = varint(s, at, f.end)?;
            let m = launder(&mut w.scratch, m);
            let start = at + m;
            if len > (f.end - start) as u64 {
                return Err(Error::Malformed);
            }
            let end = start + len as u32;
            w.pos = end;
            on_len(w, f, field, tag_off, at, m, start, end);
        }
        _ => return Err(Error::Malformed),
    }
    Ok(())
}

/// The wire type dt expects for a field it reads, or `u64::MAX` for fields it skips.
#[inline(always)]
fn known_wire_type(kind: u8, field: u64) -> u64 {
    match (kind, field) {
        (K_REQ, 1) => WT_LEN,
        (K_RL_SCAN | K_RL, 1..=3) => WT_LEN,
        (K_RESOURCE, 1) => WT_LEN,
        (K_SCOPE, 1..=3) => WT_LEN,
        (K_RECORD, 2) => WT_VARINT,
        (K_RECORD, 5 | 6) => WT_LEN,
        (K_KV, 1 | 2) => WT_LEN,
        (K_ANY, 1 | 5 | 6 | 7) => WT_LEN,
        (K_ANY, 2 | 3) => WT_VARINT,
        (K_ANY, 4) => WT_I64,
        _ => u64::MAX,
    }
}

#[inline(always)]
fn on_scalar(w: &mut Walk, f: Frame, field: u64, v: Option<u64>) {
    match (f.kind, field) {
        (K_RECORD, 2) => {
            // An enum is an int32: decoders keep the low 32 bits of the varint.
            let v = v.unwrap_or(0) as u32 as i32 as i64;
            w.sev = if (0..=24).contains(&v) {
                v as u32
            } else {
                SEV_OUT_OF_RANGE as u32
            };
        }
        (K_ANY, 2..=4) => set_value(w, f.role, V_OTHER, 0, 0),
        _ => {}
    }
}

#[inline(always)]
fn set_value(w: &mut Walk, role: u8, kind: u32, off: u32, len: u32) {
    if role == R_BODY {
        w.body_kind = kind;
        w.body_off = off;
        w.body_len = len;
    } else {
        w.val_kind = kind;
        w.val_off = off;
        w.val_len = len;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn on_len(
    w: &mut Walk,
    f: Frame,
    field: u64,
    tag_off: u32,
    len_off: u32,
    len_len: u32,
    start: u32,
    end: u32,
) {
    match (f.kind, field) {
        (K_REQ, 1) => {
            w.svc_set = 0;
            w.svc_off = 0;
            w.svc_len = 0;
            w.svc_bits = 0;
            w.push(K_RL_SCAN, R_NONE, start, end, len_off, len_len);
        }
        (K_RL_SCAN, 1) => w.push(K_RESOURCE, R_NONE, start, end, len_off, len_len),
        (K_RESOURCE, 1) => {
            w.key_set = 0;
            w.val_kind = V_NONE;
            w.push(K_KV, R_RESOURCE_ATTR, start, end, len_off, len_len);
        }
        (K_RL, 2) => w.push(K_SCOPE, R_NONE, start, end, len_off, len_len),
        (K_SCOPE, 2) => {
            w.rec_off = tag_off;
            w.rec_end = end;
            w.sev = 0;
            w.body_kind = V_NONE;
            w.attr_bits = 0;
            w.body_bits = 0;
            w.push(K_RECORD, R_NONE, start, end, len_off, len_len);
        }
        (K_RECORD, 5) => w.push(K_ANY, R_BODY, start, end, len_off, len_len),
        (K_RECORD, 6) => {
            w.key_set = 0;
            w.val_kind = V_NONE;
            w.push(K_KV, R_RECORD_ATTR, start, end, len_off, len_len);
        }
        (K_KV, 1) => {
            w.key_off = start;
            w.key_len = end - start;
            w.key_set = 1;
        }
        (K_KV, 2) => w.push(K_ANY, R_KV_VALUE, start, end, len_off, len_len),
        (K_ANY, 1) => set_value(w, f.role, V_STRING, start, end - start),
        (K_ANY, 5..=7) => set_value(w, f.role, V_OTHER, 0, 0),
        _ => {}
    }
}

/// Copies `len` bytes at `off` into the key buffer at `at`.
#[inline(always)]
fn copy_into_key<S: Source>(
    w: &mut Walk,
    s: &mut S,
    off: u32,
    len: u32,
    at: u32,
) -> Result<(), Error> {
    if s.copy_into(off, len, &mut w.key.bytes, at) {
        Ok(())
    } else {
        Err(Error::Unreadable)
    }
}

#[inline(always)]
fn clear_key(w: &mut Walk, slot: u8, kind: u8, klen: u32, vlen: u32) {
    let mut i = 0;
    while i < STR_KEY_BYTES {
        // SAFETY: a plain store; volatile so it stays a store, not a memset call.
        unsafe { core::ptr::write_volatile(&mut w.key.bytes[i], 0) };
        i += 1;
    }
    w.key._pad = 0;
    w.key.slot = slot;
    w.key.kind = kind;
    w.key.klen = klen as u8;
    w.key.vlen = vlen;
}

/// Acts on the frame that just ended, then goes back to walking its parent's fields.
#[inline(always)]
fn end_frame<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Result<(), Error> {
    let f = w.frame();
    let slot = env.slot();
    w.mode = MODE_FIELDS;
    match f.kind {
        K_REQ => {
            w.mode = MODE_DONE;
            return Ok(());
        }
        K_RL_SCAN => {
            // The resource is known: look its service name up, then walk the ScopeLogs.
            w.svc_bits = 0;
            if w.svc_set != 0 && w.svc_len as usize <= MAX_SERVICE_LEN {
                clear_key(w, slot, STR_SERVICE, 0, w.svc_len);
                copy_into_key(w, s, w.svc_off, w.svc_len, 0)?;
                w.svc_bits = env.lookup(&w.key);
            }
            let d = (w.depth & DEPTH_MASK) as usize;
            w.frames[d].kind = K_RL;
            w.pos = f.start;
            return Ok(());
        }
        K_KV => {
            let is_string = w.val_kind == V_STRING;
            if w.key_set != 0 && f.role == R_RESOURCE_ATTR {
                if is_service_name(s, w.key_off, w.key_len)? {
                    // The last service.name wins; a non-string one means no service.
                    w.svc_set = is_string as u32;
                    w.svc_off = w.val_off;
                    w.svc_len = w.val_len;
                }
            } else if w.key_set != 0
                && is_string
                && w.key_len as usize <= MAX_ATTR_KEY_LEN
                && w.val_len as usize <= MAX_ATTR_VALUE_LEN
            {
                // Two steps, one copy each: two copies of unknown length in one step would
                // have the verifier check the second once per way the first can end.
                let (ko, kl, vl) = (w.key_off, w.key_len, w.val_len);
                clear_key(w, slot, STR_ATTR, kl, vl);
                copy_into_key(w, s, ko, kl, 0)?;
                w.mode = MODE_ATTR_VALUE;
                return Ok(());
            }
        }
        K_RECORD => {
            w.depth -= 1;
            w.pos = f.end;
            if w.body_kind == V_STRING && w.body_len > 0 && env.rules().ac_states > 0 {
                w.mode = MODE_BODY_SCAN;
                w.scan_pos = w.body_off;
                w.scan_end = w.body_off + w.body_len;
                w.ac_state = 0;
            } else {
                w.mode = MODE_EVAL;
            }
            return Ok(());
        }
        _ => {}
    }
    w.depth -= 1;
    w.pos = f.end;
    Ok(())
}

#[inline(always)]
fn attr_value_step<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Result<(), Error> {
    copy_into_key(w, s, w.val_off, w.val_len, w.key_len)?;
    w.attr_bits |= env.lookup(&w.key);
    let f = w.frame();
    w.depth -= 1;
    w.pos = f.end;
    w.mode = MODE_FIELDS;
    Ok(())
}

#[inline(always)]
fn is_service_name<S: Source>(s: &mut S, off: u32, len: u32) -> Result<bool, Error> {
    let lit = b"service.name";
    if len != lit.len() as u32 {
        return Ok(false);
    }
    if !s.ensure(off, len) {
        return Err(Error::Unreadable);
    }
    let mut i = 0;
    while i < 12 {
        if s.byte(off + i as u32) != Some(lit[i]) {
            return Ok(false);
        }
        i += 1;
    }
    Ok(true)
}

#[inline(always)]
fn scan_step<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Result<(), Error> {
    let mut state = w.ac_state;
    let mut bits = w.body_bits;
    let mut pos = w.scan_pos;
    if !s.ensure(pos, SCAN_CHUNK) {
        return Err(Error::Unreadable);
    }
    let mut i = 0;
    while i < SCAN_CHUNK {
        if pos >= w.scan_end {
            break;
        }
        let b = s.byte(pos).ok_or(Error::Unreadable)?;
        let row = env.ac_row(state).ok_or(Error::Unreadable)?;
        bits |= row.out;
        state = row.next[b as usize] as u32;
        pos += 1;
        i += 1;
    }
    w.ac_state = state;
    w.scan_pos = pos;
    w.body_bits = bits;
    if pos < w.scan_end {
        return Ok(());
    }
    let row = env.ac_row(state).ok_or(Error::Unreadable)?;
    w.body_bits |= row.out;
    w.mode = MODE_EVAL;
    Ok(())
}

/// Whether `rule` matches the record described by the walk's record state.
#[inline(always)]
pub fn rule_matches(rule: &Rule, sev: u32, body: u64, attrs: u64, service: u64) -> bool {
    sev >= rule.sev_lo as u32
        && sev <= rule.sev_hi as u32
        && body & rule.body == rule.body
        && attrs & rule.attrs == rule.attrs
        && service & rule.service == rule.service
}

/// Evaluates the rules on the record just walked, per the contract: in order, `count` goes on,
/// `drop` stops.
#[inline(always)]
fn evaluate<E: Env>(w: &mut Walk, env: &mut E) -> Result<(), Error> {
    w.mode = MODE_FIELDS;
    w.records += 1;
    let rs = env.rules();
    let n = if (rs.n_rules as usize) < MAX_RULES {
        rs.n_rules as usize
    } else {
        MAX_RULES
    };
    let mut drop_at = u32::MAX;
    let mut i = 0usize;
    while i < MAX_RULES {
        if i >= n {
            break;
        }
        let r = &rs.rules[i];
        // The record's facts are read from the walk on every rule (volatile: kept as loads), so
        // the verifier carries nothing from one rule's comparisons to the next.
        // SAFETY: plain loads of fields of `w`.
        let (sev, body, attrs, svc) = unsafe {
            (
                core::ptr::read_volatile(&w.sev),
                core::ptr::read_volatile(&w.body_bits),
                core::ptr::read_volatile(&w.attr_bits),
                core::ptr::read_volatile(&w.svc_bits),
            )
        };
        if rule_matches(r, sev, body, attrs, svc) {
            w.acc[i].matched += 1;
            if r.action == ACTION_DROP {
                drop_at = i as u32;
                break;
            }
        }
        i += 1;
    }
    let rule = launder(&mut w.scratch, drop_at) as usize;
    if rule >= MAX_RULES {
        return Ok(());
    }
    let off = w.rec_off;
    let len = w.rec_end - w.rec_off;
    // The enclosing ScopeLogs is at depth-1 (the record frame is already popped: depth points at
    // the ScopeLogs), the ResourceLogs one above.
    let scope_d = w.depth;
    let rl_d = w.depth - 1;
    let rl_fix = w.fix_of(rl_d).ok_or(Error::EditLimit)?;
    let scope_fix = w.fix_of(scope_d).ok_or(Error::EditLimit)?;
    let n_pops = w.n_pops as usize;
    let mut merged = false;
    if n_pops > 0 {
        let last = &mut w.pops[(n_pops - 1) % MAX_POPS];
        if last.off + last.len == off && last.rule as usize == rule && last.scope_fix == scope_fix {
            last.len += len;
            last.records += 1;
            merged = true;
        }
    }
    if !merged {
        if n_pops >= MAX_POPS {
            return Err(Error::EditLimit);
        }
        w.pops[n_pops % MAX_POPS] = Pop {
            off,
            len,
            records: 1,
            rule: rule as u8,
            scope_fix,
            rl_fix,
            applied: 0,
        };
        w.n_pops = n_pops as u32 + 1;
    }
    let a = &mut w.acc[rule % MAX_RULES];
    a.dropped += 1;
    a.dropped_bytes += len as u64;
    w.records_dropped += 1;
    w.bytes_dropped += len;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Applying the plan

/// Prepares [`apply_step`]: the cursors start at the last pop and fix.
pub fn apply_start(w: &mut Walk) {
    w.apply_pop = w.n_pops;
    w.apply_fix = w.n_fixes;
    w.removed = 0;
    w.head_removed = 0;
}

/// Applies one edit, back to front: pops and length rewrites in descending offset order, then
/// the Content-Length. Returns `false` when everything is applied.
///
/// A pop the kernel refuses is skipped: its records stay, and their drop is taken back from the
/// rule's results, so the request stays valid and the counters stay true.
#[inline(always)]
pub fn apply_step<D: Editor>(w: &mut Walk, ed: &mut D) -> bool {
    let p = w.apply_pop;
    let x = w.apply_fix;
    if p > 0 {
        let pop = w.pops[(p as usize - 1) % MAX_POPS];
        let fix_first = x > 0 && w.fixes[(x as usize - 1) % MAX_FIXES].off > pop.off;
        if !fix_first {
            w.apply_pop = p - 1;
            if ed.pop(pop.off, pop.len) {
                w.removed += pop.len;
                w.fixes[pop.scope_fix as usize % MAX_FIXES].removed += pop.len;
                w.fixes[pop.rl_fix as usize % MAX_FIXES].removed += pop.len;
            } else {
                w.edit_failures += 1;
                let a = &mut w.acc[pop.rule as usize % MAX_RULES];
                a.dropped -= pop.records;
                a.dropped_bytes -= pop.len as u64;
                w.records_dropped -= pop.records;
                w.bytes_dropped -= pop.len;
            }
            return true;
        }
    }
    if x > 0 {
        w.apply_fix = x - 1;
        let fx = w.fixes[(x as usize - 1) % MAX_FIXES];
        if fx.removed > 0 {
            // The prefix was made reachable before any pop, and pops never split it.
            write_varint(ed, fx.off, (fx.value - fx.removed) as u64, fx.len as u32);
        }
        return true;
    }
    if w.removed > 0 && w.cl_digits > 0 {
        rewrite_content_length(w, ed);
    }
    false
}

/// Writes `v` as a varint of exactly `n` bytes at `off` (padded with continuation bytes, which
/// decoders accept). `v` fits: it is never more than the value the prefix held before.
#[inline(always)]
fn write_varint<D: Editor>(ed: &mut D, off: u32, v: u64, n: u32) {
    if n == 0 || n > 10 || !ed.reach(off, n) {
        return;
    }
    let mut i = 0u32;
    while i < 10 {
        if i >= n {
            break;
        }
        let mut b = ((v >> (7 * i)) & 0x7f) as u8;
        if i + 1 < n {
            b |= 0x80;
        }
        ed.put(off + i, b);
        i += 1;
    }
}

/// Rewrites the Content-Length digits for the bytes removed: the new number right-aligned in the
/// old digits, the leading spare digits popped (or, if the kernel refuses, left as zeros).
#[inline(always)]
fn rewrite_content_length<D: Editor>(w: &mut Walk, ed: &mut D) {
    let new = (w.body_end - w.body_start) - w.removed;
    let n = w.cl_digits;
    if n == 0 || n > 10 || !ed.reach(w.cl_off, n) {
        return;
    }
    let mut v = new;
    let mut need = 0u32;
    let mut k = 0u32;
    while k < 10 {
        if k >= n {
            break;
        }
        ed.put(w.cl_off + (n - 1 - k), b'0' + (v % 10) as u8);
        if v > 0 || k == 0 {
            need = k + 1;
        }
        v /= 10;
        k += 1;
    }
    if need < n && ed.pop(w.cl_off, n - need) {
        w.head_removed = n - need;
    }
}
