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
    ACTION_DROP, ACTION_RATE_LIMIT, ACTION_REDACT, ACTION_SAMPLE, AcRow, MAX_ATTR_KEY_LEN,
    MAX_ATTR_VALUE_LEN, MAX_EDITS, MAX_FIXES, MAX_MASKS, MAX_RECORD_BODIES,
    MAX_RECORD_REDACT_RULES, MAX_RECORD_REDACTS, MAX_RULES, MAX_SERVICE_LEN, NEED_ATTRS,
    NEED_SERVICE, RULE_MASK_BODY, Rule, RuleSet, SEV_OUT_OF_RANGE, STR_ATTR, STR_REDACT,
    STR_SERVICE, StrKey,
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
    /// A sample rule (counter `slot`, keep one in `n`) matched `m` times in a request that
    /// commits: draws the next `m` numbers of the rule's counter (shared by every CPU) at once
    /// and returns the first modulo `n` (see [`crate::decide::sample_draw`]).
    fn draw_samples(&mut self, slot: u16, m: u32, n: u64) -> u64;
    /// A rate_limit rule (counter `slot`, `per_second` tokens a second, as many in the bucket)
    /// matched `m` times in a request that commits: takes up to `m` tokens at once and returns
    /// how many it got (see [`crate::decide::gcra_take`]).
    fn take_tokens(&mut self, slot: u16, per_second: u64, m: u32) -> u32;
}

/// How the plan is applied to the message.
pub trait Editor {
    /// Removes `len` bytes at `off`. `false` when the kernel refused (the bytes stay).
    fn pop(&mut self, off: u32, len: u32) -> bool;
    /// Makes the `len` (at most [`MASK_CHUNK`]) bytes at `off` writable. `false` when they
    /// can't be reached.
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
pub const K_ISCOPE: u8 = 8;
pub const K_ARRAY: u8 = 9;
pub const K_KVLIST: u8 = 10;
pub const K_ENTITY: u8 = 11;

// Frame roles (for K_KV and K_ANY). R_NONE: only checked (scope attributes, entity refs, the
// contents of array and kvlist values), nothing read.
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
/// Look a record attribute's key up among the names redact rules remove, and end the KeyValue.
pub const MODE_ATTR_REDACT: u32 = 6;
/// The record just evaluated is kept and redact rules matched it: plan the attribute removals.
pub const MODE_REDACT_ATTRS: u32 = 7;
/// ... then the body masks.
pub const MODE_REDACT_BODIES: u32 = 8;

/// Bytes of a masked body written per apply step.
pub const MASK_CHUNK: u32 = 32;

const NO_FIX: u16 = 0xffff;
/// Frames of the walk: the deepest message nesting it checks is `MAX_DEPTH` (the request is
/// depth 0, a record attribute's value 5; array and kvlist values nest further). A request
/// nested deeper passes through ([`Error::TooDeep`]).
pub const MAX_FRAMES: usize = 32;
pub const MAX_DEPTH: u32 = MAX_FRAMES as u32 - 1;
/// Redact-rule matches of candidate records per request.
pub const MAX_CAND_REDACTS: usize = 1024;
const DEPTH_MASK: u32 = MAX_FRAMES as u32 - 1;
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
    /// Index of this frame's entry in [`Walk::fixes`], once something inside it is removed.
    pub fix: u16,
    pub prefix_len: u8,
    pub kind: u8,
    pub role: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

/// One removal of the plan: a run of adjacent records dropped by the same rule, or an
/// attribute that a redact rule removes. (Masks are a list of their own, [`Walk::masks`].)
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Edit {
    pub off: u32,
    pub len: u32,
    /// Records the edit drops (0 for redactions, and for an edit made void by the decisions).
    pub records: u16,
    /// Index of the dropping rule in the rule set.
    pub rule: u8,
    /// Non-zero for a candidate: a record matched by a sample or rate_limit rule, dropped or
    /// kept when the request commits ([`decide_step`]). It is then `1 +` the number of redact
    /// rules that matched the record, listed in [`Walk::cand_redacts`] from index `fix2`.
    pub cand: u8,
    /// The length prefixes around a pop: ScopeLogs, ResourceLogs, and for an attribute its
    /// LogRecord ([`NO_FIX`] for none; for a candidate, `fix2` is as said above).
    pub fix0: u16,
    pub fix1: u16,
    pub fix2: u16,
    /// A candidate's match number among its rule's matches in this request (from 0).
    pub ordinal: u16,
}

/// A byte range of the request.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Span {
    pub off: u32,
    pub len: u32,
}

/// A record attribute whose key some redact rule may remove.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct RedactAttr {
    pub off: u32,
    pub len: u32,
    /// The removal names its key equals.
    pub bits: u64,
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
    pub kept: u32,
    pub redacted: u32,
    pub dropped_bytes: u64,
    /// Sample rules: the first number drawn for the request, modulo `keep_one_in`; rate_limit
    /// rules: the tokens taken. Set when the request commits.
    pub draw: u64,
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
    /// 1 when those digits are a chunk size (hex, rewritten zero-padded in place), not a
    /// Content-Length.
    pub cl_hex: u32,
    pub _pad_hex: u32,
    pub frames: [Frame; MAX_FRAMES],

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
    /// The record's own length prefix, and its fix once an attribute is removed from it.
    pub rec_prefix_off: u32,
    pub rec_prefix_len: u32,
    pub rec_len: u32,
    pub rec_fix: u32,
    /// 1 when the record is a candidate of a sample or rate_limit rule.
    pub rec_cand: u32,
    pub _pad2: u32,
    /// The record attribute (KeyValue field) being walked: tag offset and end.
    pub kv_off: u32,
    pub kv_end: u32,
    /// Attributes a redact rule may remove, string bodies a redact rule may mask; set when there
    /// were more than the walk holds.
    pub n_redact_attrs: u32,
    pub n_bodies: u32,
    pub redact_overflow: u32,
    pub body_overflow: u32,
    pub redact_attrs: [RedactAttr; MAX_RECORD_REDACTS],
    pub bodies: [Span; MAX_RECORD_BODIES],
    /// Redact rules that matched the record (their indexes), the names they remove, and whether
    /// one masks the body.
    pub n_redact_rules: u32,
    pub redact_mask: u32,
    pub redact_remove: u64,
    pub redact_rules: [u8; MAX_RECORD_REDACT_RULES],

    /// Scratch for [`launder`].
    pub scratch: u32,
    /// How the walk ended, for the kernel's loop driver (kept here, not on its stack).
    pub outcome: i32,
    // Body scan.
    pub scan_pos: u32,
    pub scan_end: u32,
    pub ac_state: u32,

    // Results.
    pub records: u32,
    pub records_dropped: u32,
    pub bytes_dropped: u32,
    pub n_edits: u32,
    pub n_fixes: u32,
    pub n_masks: u32,
    /// Apply cursor: edits and fixes not yet applied (counting down), and bytes of the current
    /// mask already written.
    pub apply_edit: u32,
    pub apply_fix: u32,
    pub apply_mask: u32,
    pub apply_done: u32,
    pub removed: u32,
    pub edit_failures: u32,
    /// Bytes removed from the head (Content-Length digits).
    pub head_removed: u32,
    /// Decisions at commit ([`decide_step`]): candidates planned, the phase and its cursor, the
    /// end of the last dropped candidate, the last edit that removes records, the mask pass's
    /// cursor over the edits.
    pub n_cands: u32,
    pub decide_phase: u32,
    pub decide_pos: u32,
    pub cut_end: u32,
    pub last_drop: u32,
    pub mask_cursor: u32,
    /// Redact rules (indexes) that matched candidates, to count as `redacted` if they are kept.
    pub n_cand_redacts: u32,
    pub cand_redacts: [u8; MAX_CAND_REDACTS],
    pub edits: [Edit; MAX_EDITS],
    /// String bodies to overwrite with '*' (offsets ascend).
    pub masks: [Span; MAX_MASKS],
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
        self.cl_hex = 0;
        self.frames[0] = Frame {
            start: body_start,
            end: body_end,
            prefix_off: 0,
            fix: NO_FIX,
            prefix_len: 0,
            kind: K_REQ,
            role: R_NONE,
            _pad0: 0,
            _pad1: 0,
        };
        self.records = 0;
        self.records_dropped = 0;
        self.bytes_dropped = 0;
        self.n_edits = 0;
        self.n_masks = 0;
        self.n_fixes = 0;
        self.n_cands = 0;
        self.n_cand_redacts = 0;
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
                core::ptr::write_volatile(&mut a.kept, 0);
                core::ptr::write_volatile(&mut a.redacted, 0);
                core::ptr::write_volatile(&mut a.dropped_bytes, 0);
                core::ptr::write_volatile(&mut a.draw, 0);
            }
            i += 1;
        }
    }

    #[inline(always)]
    fn frame(&self) -> Frame {
        self.frames[(self.depth & DEPTH_MASK) as usize]
    }

    #[inline(always)]
    fn push(
        &mut self,
        kind: u8,
        role: u8,
        start: u32,
        end: u32,
        prefix_off: u32,
        prefix_len: u32,
    ) -> Result<(), Error> {
        let d = self.depth + 1;
        if d > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        self.depth = d;
        self.frames[(d & DEPTH_MASK) as usize] = Frame {
            start,
            end,
            prefix_off,
            fix: NO_FIX,
            prefix_len: prefix_len as u8,
            kind,
            role,
            _pad0: 0,
            _pad1: 0,
        };
        self.pos = start;
        Ok(())
    }

    /// Adds a length prefix to rewrite. Fixes are added outermost first and in walk order, so
    /// their offsets ascend.
    #[inline(always)]
    fn add_fix(&mut self, off: u32, len: u32, value: u32) -> Result<u16, Error> {
        let n = self.n_fixes;
        if n as usize >= MAX_FIXES {
            return Err(Error::EditLimit);
        }
        self.fixes[n as usize % MAX_FIXES] = Fix {
            off,
            value,
            removed: 0,
            len: len as u8,
            _pad0: 0,
            _pad1: 0,
        };
        self.n_fixes = n + 1;
        Ok(n as u16)
    }

    /// The fix of the frame at depth `d`, added the first time something inside it is removed.
    #[inline(always)]
    fn fix_of(&mut self, d: u32) -> Result<u16, Error> {
        let f = self.frames[(d & DEPTH_MASK) as usize];
        if f.fix != NO_FIX {
            return Ok(f.fix);
        }
        let fix = self.add_fix(f.prefix_off, f.prefix_len as u32, f.end - f.start)?;
        self.frames[(d & DEPTH_MASK) as usize].fix = fix;
        Ok(fix)
    }

    /// Appends an edit (offsets ascend).
    #[inline(always)]
    fn add_edit(&mut self, e: Edit) -> Result<(), Error> {
        let n = self.n_edits as usize;
        if n >= MAX_EDITS {
            return Err(Error::EditLimit);
        }
        self.edits[n % MAX_EDITS] = e;
        self.n_edits = n as u32 + 1;
        Ok(())
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
        MODE_ATTR_REDACT => attr_redact_step(w, s, env),
        MODE_REDACT_ATTRS => redact_attrs_step(w),
        MODE_REDACT_BODIES => redact_bodies_step(w),
        _ => return Step::Done,
    };
    match r {
        Ok(()) if w.mode == MODE_DONE => Step::Done,
        Ok(()) => Step::More,
        Err(e) => Step::Failed(e),
    }
}

/// Runs a whole walk on the host, and the decisions of a walk that succeeds.
pub fn run<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Result<(), Error> {
    loop {
        match step(w, s, env) {
            Step::More => {}
            Step::Done => {
                decide(w, env);
                return Ok(());
            }
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
    // Field numbers are 1..2^29-1.
    if field == 0 || field >= 1 << 29 {
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
            on_len(w, s, f, field, tag_off, at, m, start, end)?;
        }
        _ => return Err(Error::Malformed),
    }
    Ok(())
}

/// The wire type of every field the OTLP logs schema defines, or `u64::MAX` for unknown fields
/// (skipped by their wire type). A known field with another wire type is malformed, as for
/// prost.
#[inline(always)]
fn known_wire_type(kind: u8, field: u64) -> u64 {
    match (kind, field) {
        (K_REQ, 1) => WT_LEN,
        // ResourceLogs: resource, scope_logs, schema_url.
        (K_RL_SCAN | K_RL, 1..=3) => WT_LEN,
        // Resource: attributes, dropped_attributes_count, entity_refs.
        (K_RESOURCE, 1 | 3) => WT_LEN,
        (K_RESOURCE, 2) => WT_VARINT,
        // ScopeLogs: scope, log_records, schema_url.
        (K_SCOPE, 1..=3) => WT_LEN,
        // InstrumentationScope: name, version, attributes, dropped_attributes_count.
        (K_ISCOPE, 1..=3) => WT_LEN,
        (K_ISCOPE, 4) => WT_VARINT,
        // LogRecord: time_unix_nano, observed_time_unix_nano; severity_number,
        // dropped_attributes_count; flags; severity_text, body, attributes, trace_id, span_id,
        // event_name.
        (K_RECORD, 1 | 11) => WT_I64,
        (K_RECORD, 2 | 7) => WT_VARINT,
        (K_RECORD, 8) => WT_I32,
        (K_RECORD, 3 | 5 | 6 | 9 | 10 | 12) => WT_LEN,
        (K_KV, 1 | 2) => WT_LEN,
        (K_ANY, 1 | 5 | 6 | 7) => WT_LEN,
        (K_ANY, 2 | 3) => WT_VARINT,
        (K_ANY, 4) => WT_I64,
        // ArrayValue and KeyValueList: values.
        (K_ARRAY | K_KVLIST, 1) => WT_LEN,
        // EntityRef: schema_url, type, id_keys, description_keys.
        (K_ENTITY, 1..=4) => WT_LEN,
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
        if kind == V_STRING && len > 0 {
            // Every string occurrence is masked, so no unmasked copy stays on the wire.
            let n = w.n_bodies as usize;
            if n < MAX_RECORD_BODIES {
                w.bodies[n] = Span { off, len };
                w.n_bodies = n as u32 + 1;
            } else {
                w.body_overflow = 1;
            }
        }
    } else if role == R_KV_VALUE {
        w.val_kind = kind;
        w.val_off = off;
        w.val_len = len;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn on_len<S: Source>(
    w: &mut Walk,
    s: &mut S,
    f: Frame,
    field: u64,
    tag_off: u32,
    len_off: u32,
    len_len: u32,
    start: u32,
    end: u32,
) -> Result<(), Error> {
    match (f.kind, field) {
        (K_REQ, 1) => {
            w.svc_set = 0;
            w.svc_off = 0;
            w.svc_len = 0;
            w.svc_bits = 0;
            w.push(K_RL_SCAN, R_NONE, start, end, len_off, len_len)
        }
        (K_RL_SCAN, 1) => w.push(K_RESOURCE, R_NONE, start, end, len_off, len_len),
        (K_RESOURCE, 1) => {
            w.key_set = 0;
            w.val_kind = V_NONE;
            w.push(K_KV, R_RESOURCE_ATTR, start, end, len_off, len_len)
        }
        (K_RESOURCE, 3) => w.push(K_ENTITY, R_NONE, start, end, len_off, len_len),
        (K_RL, 2) => w.push(K_SCOPE, R_NONE, start, end, len_off, len_len),
        (K_SCOPE, 1) => w.push(K_ISCOPE, R_NONE, start, end, len_off, len_len),
        (K_ISCOPE, 3) | (K_KVLIST, 1) => w.push(K_KV, R_NONE, start, end, len_off, len_len),
        (K_SCOPE, 2) => {
            w.rec_off = tag_off;
            w.rec_end = end;
            w.sev = 0;
            w.body_kind = V_NONE;
            w.attr_bits = 0;
            w.body_bits = 0;
            w.rec_fix = NO_FIX as u32;
            w.rec_cand = 0;
            w.n_redact_attrs = 0;
            w.n_bodies = 0;
            w.redact_overflow = 0;
            w.body_overflow = 0;
            w.push(K_RECORD, R_NONE, start, end, len_off, len_len)
        }
        (K_RECORD, 5) => match single_string(w, s, start, end) {
            Some((off, len)) => {
                set_value(w, R_BODY, V_STRING, off, len);
                Ok(())
            }
            None => w.push(K_ANY, R_BODY, start, end, len_off, len_len),
        },
        (K_RECORD, 6) => {
            w.key_set = 0;
            w.val_kind = V_NONE;
            w.kv_off = tag_off;
            w.kv_end = end;
            w.push(K_KV, R_RECORD_ATTR, start, end, len_off, len_len)
        }
        (K_KV, 1) => {
            if f.role != R_NONE {
                w.key_off = start;
                w.key_len = end - start;
                w.key_set = 1;
            }
            Ok(())
        }
        (K_KV, 2) => {
            let role = if f.role == R_NONE { R_NONE } else { R_KV_VALUE };
            match single_string(w, s, start, end) {
                Some((off, len)) => {
                    set_value(w, role, V_STRING, off, len);
                    Ok(())
                }
                None => w.push(K_ANY, role, start, end, len_off, len_len),
            }
        }
        (K_ANY, 1) => {
            set_value(w, f.role, V_STRING, start, end - start);
            Ok(())
        }
        (K_ANY, 5) => {
            set_value(w, f.role, V_OTHER, 0, 0);
            w.push(K_ARRAY, R_NONE, start, end, len_off, len_len)
        }
        (K_ANY, 6) => {
            set_value(w, f.role, V_OTHER, 0, 0);
            w.push(K_KVLIST, R_NONE, start, end, len_off, len_len)
        }
        (K_ANY, 7) => {
            set_value(w, f.role, V_OTHER, 0, 0);
            Ok(())
        }
        (K_ARRAY, 1) => match single_string(w, s, start, end) {
            Some(_) => Ok(()),
            None => w.push(K_ANY, R_NONE, start, end, len_off, len_len),
        },
        _ => Ok(()),
    }
}

/// An AnyValue that is exactly one `string_value` field (how encoders write a string): its
/// string's span, found without walking a frame for it (three steps saved). Anything else —
/// other fields, more than one — returns `None` and is walked as usual.
#[inline(always)]
fn single_string<S: Source>(w: &mut Walk, s: &mut S, start: u32, end: u32) -> Option<(u32, u32)> {
    if end - start < 2 || !s.ensure(start, 11) || s.byte(start)? != 0x0a {
        return None;
    }
    let (len, m) = varint(s, start + 1, end).ok()?;
    let off = launder(&mut w.scratch, start + 1 + m);
    if off as u64 + len != end as u64 {
        return None;
    }
    Some((off, len as u32))
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
fn clear_key<S: Source>(w: &mut Walk, s: &mut S, slot: u8, kind: u8, klen: u32, vlen: u32) {
    s.zero_key(&mut w.key.bytes);
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
            // The whole request is still walked (and so checked), but strings no rule looks at
            // are not looked up.
            let needs = env.rules().needs;
            w.svc_bits = 0;
            if needs & NEED_SERVICE != 0 && w.svc_set != 0 && w.svc_len as usize <= MAX_SERVICE_LEN
            {
                clear_key(w, s, slot, STR_SERVICE, 0, w.svc_len);
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
            } else if f.role == R_RECORD_ATTR
                && w.key_set != 0
                && w.key_len as usize <= MAX_ATTR_KEY_LEN
            {
                if env.rules().needs & NEED_ATTRS != 0
                    && is_string
                    && w.val_len as usize <= MAX_ATTR_VALUE_LEN
                {
                    // Two steps, one copy each: two copies of unknown length in one step would
                    // have the verifier check the second once per way the first can end.
                    let (ko, kl, vl) = (w.key_off, w.key_len, w.val_len);
                    clear_key(w, s, slot, STR_ATTR, kl, vl);
                    copy_into_key(w, s, ko, kl, 0)?;
                    w.mode = MODE_ATTR_VALUE;
                    return Ok(());
                }
                if env.rules().remove_keys > 0 {
                    w.mode = MODE_ATTR_REDACT;
                    return Ok(());
                }
            }
        }
        K_RECORD => {
            w.depth -= 1;
            w.pos = f.end;
            w.rec_prefix_off = f.prefix_off;
            w.rec_prefix_len = f.prefix_len as u32;
            w.rec_len = f.end - f.start;
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
    if env.rules().remove_keys > 0 {
        w.mode = MODE_ATTR_REDACT;
        return Ok(());
    }
    end_kv(w);
    Ok(())
}

/// Records the attribute if redact rules name its key (any value type), then ends the
/// KeyValue.
#[inline(always)]
fn attr_redact_step<S: Source, E: Env>(w: &mut Walk, s: &mut S, env: &mut E) -> Result<(), Error> {
    let kl = w.key_len;
    clear_key(w, s, env.slot(), STR_REDACT, kl, 0);
    copy_into_key(w, s, w.key_off, kl, 0)?;
    let bits = env.lookup(&w.key);
    if bits != 0 {
        let n = w.n_redact_attrs as usize;
        if n < MAX_RECORD_REDACTS {
            w.redact_attrs[n] = RedactAttr {
                off: w.kv_off,
                len: w.kv_end - w.kv_off,
                bits,
            };
            w.n_redact_attrs = n as u32 + 1;
        } else {
            w.redact_overflow = 1;
        }
    }
    end_kv(w);
    Ok(())
}

#[inline(always)]
fn end_kv(w: &mut Walk) {
    let f = w.frame();
    w.depth -= 1;
    w.pos = f.end;
    w.mode = MODE_FIELDS;
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

/// Evaluates the rules on the record just walked, per the contract: in order; `count` and
/// `redact` go on; `drop`, `sample` and `rate_limit` stop.
#[inline(always)]
fn evaluate<E: Env>(w: &mut Walk, env: &mut E) -> Result<(), Error> {
    w.mode = MODE_FIELDS;
    w.records += 1;
    w.n_redact_rules = 0;
    w.redact_remove = 0;
    w.redact_mask = 0;
    let rs = env.rules();
    let n = if (rs.n_rules as usize) < MAX_RULES {
        rs.n_rules as usize
    } else {
        MAX_RULES
    };
    let mut stop_at = u32::MAX;
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
            let action = r.action;
            if action == ACTION_DROP || action == ACTION_SAMPLE || action == ACTION_RATE_LIMIT {
                stop_at = i as u32;
                break;
            }
            if action == ACTION_REDACT {
                note_redact(w, i, r)?;
            }
        }
        i += 1;
    }
    // One decision after the loop, not one copy of it per rule.
    let rule = launder(&mut w.scratch, stop_at) as usize;
    if rule < MAX_RULES {
        let action = rs.rules[rule].action;
        if action != ACTION_SAMPLE && action != ACTION_RATE_LIMIT {
            return drop_record(w, rule);
        }
        // Sample and rate_limit decide when the request commits: plan the record as a
        // candidate, with its redactions in case it is kept.
        plan_candidate(w, rule)?;
    }
    if w.n_redact_rules > 0 {
        w.mode = MODE_REDACT_ATTRS;
    }
    Ok(())
}

/// Notes that redact rule `i` matched the record. Through memory (volatile), not registers: a
/// count carried in a register from rule to rule would make the verifier check every later
/// rule once per possible count.
#[inline(always)]
fn note_redact(w: &mut Walk, i: usize, r: &Rule) -> Result<(), Error> {
    // SAFETY: plain loads and stores of fields of `w`.
    unsafe {
        use core::ptr::{read_volatile as get, write_volatile as set};
        let k = get(&w.n_redact_rules) as usize;
        if k >= MAX_RECORD_REDACT_RULES {
            return Err(Error::EditLimit);
        }
        set(&mut w.redact_rules[k], i as u8);
        set(&mut w.n_redact_rules, k as u32 + 1);
        set(&mut w.redact_remove, get(&w.redact_remove) | r.remove);
        set(
            &mut w.redact_mask,
            get(&w.redact_mask) | (r.flags & RULE_MASK_BODY) as u32,
        );
    }
    Ok(())
}

/// Plans the removal of the record just evaluated, dropped by rule `rule`.
#[inline(always)]
fn drop_record(w: &mut Walk, rule: usize) -> Result<(), Error> {
    let off = w.rec_off;
    let len = w.rec_end - w.rec_off;
    // The record frame is already popped: depth points at the ScopeLogs, the ResourceLogs is
    // one above.
    let rl_fix = w.fix_of(w.depth - 1)?;
    let scope_fix = w.fix_of(w.depth)?;
    let n = w.n_edits as usize;
    let mut merged = false;
    if n > 0 {
        let last = &mut w.edits[(n - 1) % MAX_EDITS];
        if last.records > 0
            && last.off + last.len == off
            && last.rule as usize == rule
            && last.fix0 == scope_fix
        {
            last.len += len;
            last.records += 1;
            merged = true;
        }
    }
    if !merged {
        w.add_edit(Edit {
            off,
            len,
            records: 1,
            rule: rule as u8,
            cand: 0,
            fix0: scope_fix,
            fix1: rl_fix,
            fix2: NO_FIX,
            ordinal: 0,
        })?;
    }
    let a = &mut w.acc[rule % MAX_RULES];
    a.dropped += 1;
    a.dropped_bytes += len as u64;
    w.records_dropped += 1;
    w.bytes_dropped += len;
    Ok(())
}

/// Plans the record just evaluated as a candidate of sample or rate_limit rule `rule`: an edit
/// that removes it, made void at commit if the decision keeps it.
#[inline(always)]
fn plan_candidate(w: &mut Walk, rule: usize) -> Result<(), Error> {
    let rl_fix = w.fix_of(w.depth - 1)?;
    let scope_fix = w.fix_of(w.depth)?;
    let ordinal = w.acc[rule % MAX_RULES].matched - 1;
    let first = w.n_cand_redacts;
    let n = w.n_redact_rules;
    if first as usize + n as usize > MAX_CAND_REDACTS {
        return Err(Error::EditLimit);
    }
    w.add_edit(Edit {
        off: w.rec_off,
        len: w.rec_end - w.rec_off,
        records: 1,
        rule: rule as u8,
        cand: 1 + n as u8,
        fix0: scope_fix,
        fix1: rl_fix,
        fix2: first as u16,
        ordinal: ordinal as u16,
    })?;
    w.n_cands += 1;
    w.rec_cand = 1;
    Ok(())
}

/// The kept record just evaluated matched redact rules: count them (for a candidate, note them
/// to count if it is kept), and plan the removal of the attributes they name.
#[inline(always)]
fn redact_attrs_step(w: &mut Walk) -> Result<(), Error> {
    w.mode = MODE_REDACT_BODIES;
    // SAFETY: a plain load of a field of `w` (volatile: nothing carried in registers from it).
    let cand = unsafe { core::ptr::read_volatile(&w.rec_cand) } != 0;
    let mut k = 0usize;
    while k < MAX_RECORD_REDACT_RULES {
        if k >= w.n_redact_rules as usize {
            break;
        }
        let i = w.redact_rules[k];
        if cand {
            let c = w.n_cand_redacts as usize;
            w.cand_redacts[c % MAX_CAND_REDACTS] = i;
            w.n_cand_redacts = c as u32 + 1;
        } else {
            w.acc[i as usize % MAX_RULES].redacted += 1;
        }
        k += 1;
    }
    let remove = w.redact_remove;
    if remove == 0 {
        return Ok(());
    }
    if w.redact_overflow != 0 {
        return Err(Error::EditLimit);
    }
    let mut any = false;
    k = 0;
    while k < MAX_RECORD_REDACTS {
        if k < w.n_redact_attrs as usize && w.redact_attrs[k].bits & remove != 0 {
            any = true;
        }
        k += 1;
    }
    if !any {
        return Ok(());
    }
    // Outermost first, so fix offsets ascend.
    let rl_fix = w.fix_of(w.depth - 1)?;
    let scope_fix = w.fix_of(w.depth)?;
    let rec_fix = w.add_fix(w.rec_prefix_off, w.rec_prefix_len, w.rec_len)?;
    k = 0;
    while k < MAX_RECORD_REDACTS {
        if k >= w.n_redact_attrs as usize {
            break;
        }
        let a = w.redact_attrs[k];
        if a.bits & remove != 0 {
            w.add_edit(Edit {
                off: a.off,
                len: a.len,
                records: 0,
                rule: 0,
                cand: 0,
                fix0: scope_fix,
                fix1: rl_fix,
                fix2: rec_fix,
                ordinal: 0,
            })?;
        }
        k += 1;
    }
    Ok(())
}

/// ... and the masking of its string bodies.
#[inline(always)]
fn redact_bodies_step(w: &mut Walk) -> Result<(), Error> {
    w.mode = MODE_FIELDS;
    if w.redact_mask == 0 || w.n_bodies == 0 {
        return Ok(());
    }
    if w.body_overflow != 0 {
        return Err(Error::EditLimit);
    }
    let mut k = 0usize;
    while k < MAX_RECORD_BODIES {
        if k >= w.n_bodies as usize {
            break;
        }
        let n = launder(&mut w.scratch, w.n_masks) as usize;
        if n >= MAX_MASKS {
            return Err(Error::EditLimit);
        }
        w.masks[n & (MAX_MASKS - 1)] = w.bodies[k];
        w.n_masks = n as u32 + 1;
        k += 1;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Deciding the candidates, once the request is known to commit

const DECIDE_RULES: u32 = 0;
const DECIDE_EDITS: u32 = 1;
const DECIDE_MASKS: u32 = 2;
const DECIDE_DONE: u32 = 3;
const NO_EDIT: u32 = u32::MAX;

/// Prepares [`decide_step`]. Call it only for a walk that will be applied: the decisions take
/// sample numbers and tokens that are never given back.
pub fn decide_start(w: &mut Walk) {
    w.decide_phase = if w.n_cands == 0 {
        DECIDE_DONE
    } else {
        DECIDE_RULES
    };
    w.decide_pos = 0;
    w.cut_end = 0;
    w.last_drop = NO_EDIT;
    w.mask_cursor = 0;
}

/// One step of the decisions on the candidates: first, per sample or rate_limit rule that
/// matched, the request's sample numbers or tokens are taken at once; then each candidate is
/// kept (its edit made void) or dropped (merged with an adjacent removal of the same rule), and
/// the redactions inside dropped candidates are made void. Returns `false` when done.
#[inline(always)]
pub fn decide_step<E: Env>(w: &mut Walk, env: &mut E) -> bool {
    match w.decide_phase {
        DECIDE_RULES => decide_rule(w, env),
        DECIDE_EDITS => decide_edit(w, env),
        DECIDE_MASKS => decide_mask(w),
        _ => return false,
    }
    true
}

#[inline(always)]
fn decide_rule<E: Env>(w: &mut Walk, env: &mut E) {
    let i = w.decide_pos as usize;
    let n = env.rules().n_rules as usize;
    if i >= n || i >= MAX_RULES {
        w.decide_phase = DECIDE_EDITS;
        w.decide_pos = 0;
        return;
    }
    w.decide_pos += 1;
    let r = env.rules().rules[i];
    let m = w.acc[i].matched;
    if m == 0 {
        return;
    }
    if r.action == ACTION_SAMPLE {
        w.acc[i].draw = env.draw_samples(r.slot, m, r.param);
    } else if r.action == ACTION_RATE_LIMIT {
        w.acc[i].draw = env.take_tokens(r.slot, r.param, m) as u64;
    }
}

#[inline(always)]
fn decide_edit<E: Env>(w: &mut Walk, env: &mut E) {
    let k = w.decide_pos as usize;
    if k >= w.n_edits as usize || k >= MAX_EDITS {
        w.decide_phase = DECIDE_MASKS;
        w.decide_pos = 0;
        return;
    }
    w.decide_pos += 1;
    let e = w.edits[k];
    if e.cand == 0 {
        if e.records > 0 {
            w.last_drop = k as u32;
        } else if e.off < w.cut_end {
            // A redaction inside a dropped candidate: nothing to redact.
            w.edits[k].len = 0;
        }
        return;
    }
    let rule = e.rule as usize % MAX_RULES;
    let r = env.rules().rules[rule];
    let a = w.acc[rule];
    let keep = if r.action == ACTION_SAMPLE {
        crate::decide::sample_keeps(a.draw, e.ordinal as u32, r.param)
    } else {
        (e.ordinal as u64) < a.draw
    };
    w.edits[k].cand = 0;
    if keep {
        w.edits[k].len = 0;
        w.edits[k].records = 0;
        w.acc[rule].kept += 1;
        let first = e.fix2 as usize;
        let mut j = 0usize;
        while j < MAX_RECORD_REDACT_RULES {
            if j + 1 >= e.cand as usize {
                break;
            }
            let i = w.cand_redacts[(first + j) % MAX_CAND_REDACTS] as usize;
            w.acc[i % MAX_RULES].redacted += 1;
            j += 1;
        }
        return;
    }
    w.edits[k].fix2 = NO_FIX;
    w.acc[rule].dropped += 1;
    w.acc[rule].dropped_bytes += e.len as u64;
    w.records_dropped += 1;
    w.bytes_dropped += e.len;
    w.cut_end = e.off + e.len;
    let last = w.last_drop;
    if last != NO_EDIT {
        let l = &mut w.edits[last as usize % MAX_EDITS];
        if l.records > 0 && l.off + l.len == e.off && l.rule == e.rule && l.fix0 == e.fix0 {
            l.len += e.len;
            l.records += 1;
            w.edits[k].len = 0;
            w.edits[k].records = 0;
            return;
        }
    }
    w.last_drop = k as u32;
}

/// Makes void the masks inside dropped candidates. Masks and edits both ascend by offset: each
/// step either moves the cursor over the edits past one that ends before the mask, or decides
/// one mask.
#[inline(always)]
fn decide_mask(w: &mut Walk) {
    let m = w.decide_pos as usize;
    if m >= w.n_masks as usize || m >= MAX_MASKS {
        w.decide_phase = DECIDE_DONE;
        return;
    }
    let mask = w.masks[m % MAX_MASKS];
    let c = w.mask_cursor as usize;
    if c < w.n_edits as usize && c < MAX_EDITS {
        let e = w.edits[c];
        if e.records == 0 || e.len == 0 || e.off + e.len <= mask.off {
            w.mask_cursor += 1;
            return;
        }
        if e.off <= mask.off {
            w.masks[m % MAX_MASKS].len = 0;
        }
    }
    w.decide_pos += 1;
}

/// Runs all the decisions on the host.
pub fn decide<E: Env>(w: &mut Walk, env: &mut E) {
    decide_start(w);
    while decide_step(w, env) {}
}

// ------------------------------------------------------------------------------------------
// Applying the plan

/// Prepares [`apply_step`]: the cursors start at the last edit, mask and fix.
pub fn apply_start(w: &mut Walk) {
    w.apply_edit = w.n_edits;
    w.apply_fix = w.n_fixes;
    w.apply_mask = w.n_masks;
    w.apply_done = 0;
    w.removed = 0;
    w.head_removed = 0;
}

/// Applies one edit (or one chunk of a mask), back to front: removals, masks and length
/// rewrites in descending offset order, then the Content-Length. Returns `false` when everything
/// is applied.
///
/// A pop the kernel refuses is skipped: its records stay, and their drop is taken back from the
/// rule's results (they count as kept), so the request stays valid and the counters true.
#[inline(always)]
pub fn apply_step<D: Editor>(w: &mut Walk, ed: &mut D) -> bool {
    let (p, x, m) = (w.apply_edit, w.apply_fix, w.apply_mask);
    // The next item back to front is the one with the highest offset (they never overlap).
    let e_off = if p > 0 {
        w.edits[(p as usize - 1) % MAX_EDITS].off as u64
    } else {
        0
    };
    let x_off = if x > 0 {
        w.fixes[(x as usize - 1) % MAX_FIXES].off as u64
    } else {
        0
    };
    let m_off = if m > 0 {
        w.masks[(m as usize - 1) % MAX_MASKS].off as u64
    } else {
        0
    };
    if p > 0 && e_off >= x_off && e_off >= m_off {
        let e = w.edits[(p as usize - 1) % MAX_EDITS];
        w.apply_edit = p - 1;
        pop_edit(w, ed, e);
        return true;
    }
    if m > 0 && m_off >= x_off {
        let span = w.masks[(m as usize - 1) % MAX_MASKS];
        mask_chunk(w, ed, span);
        return true;
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

#[inline(always)]
fn pop_edit<D: Editor>(w: &mut Walk, ed: &mut D, e: Edit) {
    if e.len == 0 {
        // Made void by the decisions.
        return;
    }
    if ed.pop(e.off, e.len) {
        w.removed += e.len;
        if e.fix0 != NO_FIX {
            w.fixes[e.fix0 as usize % MAX_FIXES].removed += e.len;
        }
        if e.fix1 != NO_FIX {
            w.fixes[e.fix1 as usize % MAX_FIXES].removed += e.len;
        }
        if e.fix2 != NO_FIX {
            w.fixes[e.fix2 as usize % MAX_FIXES].removed += e.len;
        }
        return;
    }
    w.edit_failures += 1;
    if e.records > 0 {
        let a = &mut w.acc[e.rule as usize % MAX_RULES];
        a.dropped -= e.records as u32;
        a.kept += e.records as u32;
        a.dropped_bytes -= e.len as u64;
        w.records_dropped -= e.records as u32;
        w.bytes_dropped -= e.len;
    }
}

/// Writes the next chunk of the current mask; moves to the next mask when it is complete.
#[inline(always)]
fn mask_chunk<D: Editor>(w: &mut Walk, ed: &mut D, span: Span) {
    if span.len == 0 {
        // Made void by the decisions.
        w.apply_done = 0;
        w.apply_mask -= 1;
        return;
    }
    let done = w.apply_done;
    let n = if span.len - done < MASK_CHUNK {
        span.len - done
    } else {
        MASK_CHUNK
    };
    let off = span.off + done;
    if ed.reach(off, n) {
        let mut i = 0u32;
        while i < MASK_CHUNK {
            if i >= n {
                break;
            }
            ed.put(off + i, b'*');
            i += 1;
        }
    } else {
        w.edit_failures += 1;
    }
    if done + n >= span.len {
        w.apply_done = 0;
        w.apply_mask -= 1;
    } else {
        w.apply_done = done + n;
    }
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
/// old digits, the leading spare digits popped (or, if the kernel refuses, left as zeros). A
/// chunk size is written in hex, zero-padded to its old width (chunk sizes may have leading
/// zeros).
#[inline(always)]
fn rewrite_content_length<D: Editor>(w: &mut Walk, ed: &mut D) {
    let new = (w.body_end - w.body_start) - w.removed;
    let n = w.cl_digits;
    if n == 0 || n > 10 || !ed.reach(w.cl_off, n) {
        return;
    }
    if w.cl_hex != 0 {
        let mut v = new;
        let mut k = 0u32;
        while k < 10 {
            if k >= n {
                break;
            }
            let d = (v & 15) as u8;
            ed.put(
                w.cl_off + (n - 1 - k),
                if d < 10 { b'0' + d } else { b'a' + d - 10 },
            );
            v >>= 4;
            k += 1;
        }
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
