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

mod apply;
mod enrich;
mod eval;
mod fast;
mod fields;
mod plan;

pub use apply::{MAX_APPLY_STEPS, apply_start, apply_step};
pub use enrich::{
    ENRICH_KV_MAX, ENRICH_VALUE_MAX, Insert, MAX_INSERTS, encode_kv, prepare_enrich, varint_len,
};
pub use eval::{GroupSink, note_groups};
use eval::{evaluate, fire_step, group_step};
use fast::fast_lookup_step;
pub use fast::{
    FAST_FIELDS, FAST_LOOKUP_STEPS, FAST_RECORD_MAX, FastLook, Hashes, MAX_FAST_LOOKS, fast_lookup,
    fast_lookup_steps, fast_lookups, parse_begin, parse_end, parse_field, parse_record,
};
pub use fields::scan_chunk;
use fields::{
    attr_group_step, attr_redact_step, attr_value_step, end_frame, event_step, field_step,
    res_key_step, scan_step,
};
pub use plan::{decide, decide_start, decide_step};
use plan::{redact_attrs_step, redact_bodies_step};

use crate::{
    AC_OUT, ACTION_DROP, ACTION_RATE_LIMIT, ACTION_REDACT, ACTION_SAMPLE, ACTION_TRIGGER, AcTable,
    FIRST_ATTRS, FIRST_BODY, FIRST_SERVICE, GROUP_ATTR, GROUP_EVENT, GROUP_SERVICE, GROUP_SEVERITY,
    GV_BOOL, GV_INT, GV_LEVEL, GV_MISSING, GV_OTHER, GV_STRING, GroupNote, MAX_AC_STATES,
    MAX_ATTR_KEY_LEN, MAX_ATTR_VALUE_LEN, MAX_EDITS, MAX_EVENT_LEN, MAX_FIXES, MAX_GROUP_KEYS,
    MAX_GROUP_RULES, MAX_MASKS, MAX_RECORD_BODIES, MAX_RECORD_REDACT_RULES, MAX_RECORD_REDACTS,
    MAX_RULES, MAX_SERVICE_LEN, NEED_ATTRS, NEED_EVENT, NEED_GROUPS, NEED_SCAN_SKIP,
    NEED_SCAN_WORDS, NEED_SERVICE, NEED_STATES, RULE_MASK_BODY, Rule, RuleSet, SEV_OUT_OF_RANGE,
    STR_ATTR, STR_ATTR_BOOL, STR_ATTR_INT, STR_ENRICH, STR_EVENT, STR_GROUP, STR_REDACT,
    STR_SERVICE, StrKey, key_len_bit, severity_level,
    wire::{CHUNK_BYTES, Error, Source, varint},
};

/// What the walker needs from the rule set beyond the [`RuleSet`] itself.
pub trait Env {
    fn rules(&self) -> &RuleSet;
    /// The rule set slot (0 or 1) the rules come from; part of every [`StrKey`].
    fn slot(&self) -> u8;
    /// Condition bits set by a service name or attribute pair (0 when none).
    fn lookup(&mut self, key: &StrKey) -> u64;
    /// Aho-Corasick state `state` of the active slot.
    /// The active slot's automaton, flattened.
    fn ac_table(&self) -> Option<&AcTable>;
    /// The body scan of the chunk in [`Walk::scan_buf`] ([`scan_chunk`]); `false` when the
    /// automaton can't be read. The kernel runs it as a global function.
    #[inline(always)]
    fn scan_chunk(&mut self, w: &mut Walk, n: u32) -> bool {
        match self.ac_table() {
            Some(t) => {
                scan_chunk(w, self.rules(), t, n);
                true
            }
            None => false,
        }
    }
    /// A sample rule (counter `slot`, keep one in `n`) matched `m` times in a request that
    /// commits: draws the next `m` numbers of the rule's counter (shared by every CPU) at once
    /// and returns the first modulo `n` (see [`crate::decide::sample_draw`]).
    fn draw_samples(&mut self, slot: u16, m: u32, n: u64) -> u64;
    /// A rate_limit rule (counter `slot`, `per_second` tokens a second, as many in the bucket)
    /// matched `m` times in a request that commits: takes up to `m` tokens at once and returns
    /// how many it got (see [`crate::decide::gcra_take`]).
    fn take_tokens(&mut self, slot: u16, per_second: u64, m: u32) -> u32;
    /// Writes the states on now, among `which` (bits of state slots), to `out`: read once when
    /// a record's evaluation begins.
    fn states(&mut self, which: u64, out: &mut u64);
    /// Trigger rule `rule` matched a record: decides whether it fires (threshold, cooldown) and
    /// if so does what it does (states on, flushes asked for, `fired` counted), at once and for
    /// good, whatever becomes of the request.
    fn trigger(&mut self, slot: u16, trigger: &crate::Trigger);
    /// The record fast path's parse of the record copied into [`Walk::rec_buf`]
    /// ([`parse_record`]). The kernel runs it as a global function.
    #[inline(always)]
    fn parse_record(&mut self, w: &mut Walk, len: u32) -> bool {
        parse_record(w, self.rules(), len)
    }
    /// The record fast path's lookups ([`fast_lookups`]) of the record just parsed. The kernel
    /// runs them as a global function.
    fn fast_lookups(&mut self, w: &mut Walk);
    /// Keeps the grouped matches of the record just evaluated ([`note_groups`]), counted if
    /// the request commits; `false` when the request has more than [`crate::MAX_GROUP_NOTES`].
    /// The kernel runs it as a global function.
    fn group_notes(&mut self, w: &mut Walk) -> bool;
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
    /// Inserts `len` bytes (of any value, written next) at `off`. `false` when the kernel
    /// refused (nothing changed).
    fn push(&mut self, off: u32, len: u32) -> bool;
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
/// An `int_value` or a `bool_value` (0 or 1), in [`Walk::val_num`].
pub const V_INT: u32 = 3;
pub const V_BOOL: u32 = 4;

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
/// Trigger rules matched the record just evaluated: fire them (then go on in `after_fire`).
pub const MODE_FIRE: u32 = 9;
/// A record taken whole needs lookups of its attributes: make them, then end it.
pub const MODE_FAST_LOOKUP: u32 = 10;
/// The record has ended and rules match on `event_name`: look its event name up, then go on
/// in [`Walk::after_event`].
pub const MODE_EVENT: u32 = 11;
/// Look a record attribute's key up among the `group_by` keys, and end the KeyValue.
pub const MODE_ATTR_GROUP: u32 = 12;
/// A resource attribute's key may be one `[enrich]` adds: look it up, and end the KeyValue.
pub const MODE_RES_KEY: u32 = 14;
/// Grouped count rules matched the record just evaluated: note each match with its group
/// value, then go on in [`Walk::after_group`].
pub const MODE_GROUP: u32 = 13;

/// Trigger rules that may fire on one record; more matches are counted but do not fire.
pub const MAX_RECORD_FIRES: usize = 4;

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
pub const SCAN_CHUNK: u32 = CHUNK_BYTES as u32;

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
    /// A candidate's match number among its rule's matches in this request (from 0). For a
    /// drop (`cand` 0): 1 when its records matched a redact rule before a rule dropped them
    /// (see [`Edit::matched_redact`]), else 0.
    pub ordinal: u16,
    /// The `service.name` string of the records' ResourceLogs (len 0: none), for recorders.
    pub svc_off: u32,
    pub svc_len: u32,
}

impl Edit {
    /// Whether the records it drops matched a redact rule first: a recorder does not keep
    /// them, since its copy would leave the host unredacted when flushed.
    #[inline(always)]
    pub fn matched_redact(&self) -> bool {
        if self.cand == 0 {
            self.ordinal != 0
        } else {
            self.cand > 1
        }
    }
}

/// A byte range of the request.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Span {
    pub off: u32,
    pub len: u32,
}

/// A body mask's [`Span::len`] keeps, from this bit up, the bytes of a string's tag and length
/// prefix written before its `*`s: a body that is not one `string_value` is replaced whole by a
/// string of the same size (see `fields::whole_body`). 0 for a string's bytes masked in place.
pub const MASK_HDR_SHIFT: u32 = 28;
/// The range's length, below [`MASK_HDR_SHIFT`].
pub const MASK_LEN: u32 = (1 << MASK_HDR_SHIFT) - 1;

/// A record attribute whose key some redact rule may remove.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct RedactAttr {
    pub off: u32,
    pub len: u32,
    /// The removal names its key equals.
    pub bits: u64,
}

/// The value of a record attribute a `group_by` names, as the record's walk found it (the last
/// one of that key wins).
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct GroupVal {
    /// [`V_STRING`] (`off`, `len` in the message), [`V_INT`], [`V_BOOL`] (`num`), or another.
    pub kind: u32,
    pub off: u32,
    pub len: u32,
    pub _pad: u32,
    pub num: u64,
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
    /// Bytes inserted inside the container (`[enrich]`).
    pub added: u16,
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
    /// A scalar value ([`V_INT`], [`V_BOOL`]).
    pub val_num: u64,

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
    /// The record's last `event_name` (`ev_set` 1 when it has one), and the mode its lookup
    /// goes on in.
    pub ev_off: u32,
    pub ev_len: u32,
    pub ev_set: u32,
    pub after_event: u32,
    /// The values of the `group_by` attribute keys the record has (bit `g` of `grp_seen` for
    /// key `g`); the grouped count rules it matched (indexes), noted one a step from
    /// one step, and the mode to go on in after that.
    pub grp_seen: u32,
    pub n_grp_hits: u32,
    pub _pad_grp: u32,
    pub after_group: u32,
    pub grp: [GroupVal; MAX_GROUP_KEYS],
    pub grp_hits: [u8; MAX_GROUP_RULES],
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

    /// The record's condition bits by [`Rule::first`] kind, for evaluation.
    pub facts: [u64; 4],
    /// The states on when the record's evaluation began; the trigger rules it matched (their
    /// indexes), fired after the rules, and the mode to go on in after that.
    pub state_bits: u64,
    pub n_fire: u32,
    pub fired: u32,
    pub after_fire: u32,
    pub _pad_fire: u32,
    pub fire: [u8; MAX_RECORD_FIRES],

    /// Scratch for [`launder`].
    pub scratch: u32,
    /// How the walk ended, for the kernel's loop driver (kept here, not on its stack).
    pub outcome: i32,
    // Body scan.
    pub scan_pos: u32,
    pub scan_end: u32,
    pub ac_state: u32,
    /// The chunk being scanned, copied out of the message at once.
    pub scan_buf: [u8; CHUNK_BYTES],
    /// [`RuleSet::ac_first`], each byte repeated through a word.
    pub scan_first: [u64; 4],
    /// 1: records of the usual shape are taken whole ([`fast`]), the default; 0: always field
    /// by field (the host tests compare both ways).
    pub fast: u32,
    /// The record fast path's cursor and the facts it found, set on the walk only once the
    /// whole record is taken.
    pub f_pos: u32,
    pub f_sev: u32,
    pub f_body: u32,
    pub f_body_off: u32,
    pub f_body_len: u32,
    /// Where the record starts in the message; the lookups noted.
    pub f_start: u32,
    pub f_n_look: u32,
    /// 1 when a field was not of the usual shape.
    pub f_bad: u32,
    /// The last `event_name` (offsets in the record's copy), when `f_ev` is 1.
    pub f_ev: u32,
    pub f_ev_off: u32,
    pub f_ev_len: u32,
    /// The length of the record being parsed (set by [`parse_begin`]); with `f_start`, the
    /// bytes of the message [`Walk::rec_buf`] holds (none when 0).
    pub f_len: u32,
    /// Records taken whole in this walk.
    pub fast_records: u32,
    pub f_look: [FastLook; MAX_FAST_LOOKS],
    /// The record the fast path takes, copied out of the message at once.
    pub rec_buf: [u8; FAST_RECORD_MAX as usize],

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
    /// Steps the walk took (the bench's steps per record).
    pub steps: u32,
    pub _pad_steps: u32,
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
    /// Bodies to overwrite with '*' (offsets ascend; see [`MASK_HDR_SHIFT`]).
    pub masks: [Span; MAX_MASKS],
    pub fixes: [Fix; MAX_FIXES],
    pub acc: [RuleAcc; MAX_RULES],
    pub key: StrKey,
    /// `[enrich]`: the keys the ResourceLogs being walked has.
    pub rl_has: u32,
    /// The `[enrich]` attributes this request's sender has values for (bits), each encoded in
    /// `ekv` (`ekv_len` bytes).
    pub enrich_have: u32,
    pub ekv_len: [u32; 4],
    pub ekv: [[u8; ENRICH_KV_MAX]; 4],
    /// Inserts planned; the apply cursor over them, its piece, position and offset in the
    /// piece; bytes inserted; digits pushed into the head first (and so the shift of every
    /// body offset); set when the head could not grow (no insert is made).
    pub n_ins: u32,
    pub apply_ins: u32,
    pub ins_piece: u32,
    pub ins_pos: u32,
    pub ins_poff: u32,
    pub added: u32,
    pub head_grow: u32,
    pub shift: u32,
    pub ins_void: u32,
    pub _pad_ins: u32,
    pub ins: [Insert; MAX_INSERTS],
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
        set(&mut self.records, 0);
        set(&mut self.records_dropped, 0);
        set(&mut self.bytes_dropped, 0);
        set(&mut self.n_edits, 0);
        set(&mut self.n_masks, 0);
        set(&mut self.n_ins, 0);
        set(&mut self.added, 0);
        set(&mut self.shift, 0);
        set(&mut self.head_grow, 0);
        set(&mut self.enrich_have, 0);
        set(&mut self.n_fixes, 0);
        set(&mut self.n_cands, 0);
        set(&mut self.n_cand_redacts, 0);
        set(&mut self.removed, 0);
        set(&mut self.edit_failures, 0);
        set(&mut self.head_removed, 0);
        set(&mut self.steps, 0);
        set(&mut self.fast_records, 0);
        // No record copied from this request yet.
        set(&mut self.f_len, 0);
        self.fast = 1;
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

    /// Whether the plan changes the request.
    pub fn changes(&self) -> bool {
        self.n_edits > 0 || self.n_masks > 0 || self.n_ins > 0
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
            added: 0,
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
    w.steps = w.steps.wrapping_add(1);
    let r = match w.mode {
        MODE_FIELDS => field_step(w, s, env),
        MODE_END => end_frame(w, s, env),
        MODE_BODY_SCAN => scan_step(w, s, env),
        MODE_EVAL => evaluate(w, env),
        MODE_ATTR_VALUE => attr_value_step(w, s, env),
        MODE_ATTR_REDACT => attr_redact_step(w, s, env),
        MODE_REDACT_ATTRS => redact_attrs_step(w),
        MODE_REDACT_BODIES => redact_bodies_step(w),
        MODE_FIRE => fire_step(w, env),
        MODE_FAST_LOOKUP => fast_lookup_step(w, env),
        MODE_EVENT => event_step(w, s, env),
        MODE_ATTR_GROUP => attr_group_step(w, s, env),
        MODE_RES_KEY => res_key_step(w, s, env),
        MODE_GROUP => group_step(w, env),
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

/// Stores `v` in `dst` as one store of its own: LLVM merges runs of plain stores of zero into a
/// `memset` call, a byte loop in a subprogram on the BPF target.
#[inline(always)]
pub(crate) fn set<T>(dst: &mut T, v: T) {
    // SAFETY: a plain store to a valid, aligned `T`.
    unsafe { core::ptr::write_volatile(dst, v) }
}

/// Passes `v` through memory. For the kernel's verifier, a value read back from map memory is
/// unknown, so the paths that computed different `v` (say, one per varint length) merge again
/// instead of multiplying through the rest of the step.
#[inline(always)]
pub(crate) fn launder(slot: &mut u32, v: u32) -> u32 {
    // SAFETY: a store to and a load from a valid `u32`.
    unsafe {
        core::ptr::write_volatile(slot, v);
        core::ptr::read_volatile(slot)
    }
}
