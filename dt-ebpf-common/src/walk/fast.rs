//! The record fast path: a LogRecord of the usual shape taken whole in the step that reaches
//! it, from one copy of its bytes, instead of a step per field.
//!
//! It takes what encoders write for a log record: one-byte tags, length prefixes of one or two
//! bytes, varints of one or two bytes, a body that is one `string_value`, attributes of the
//! KeyValue fast path's shape ([`super::fields::plain_kv`], ints of one or two bytes) that no
//! rule looks up. Anything else (and a record longer than [`FAST_RECORD_MAX`] or with more
//! fields than [`FAST_FIELDS`] calls of [`parse_field`] take) leaves the walk untouched, and
//! the record is walked field by field: both ways set the same facts, so what passes and what
//! is edited does not depend on the way taken (the host tests run both on every request they
//! make).

use super::fields::{
    WT_I32, WT_I64, WT_LEN, WT_VARINT, attr_looked_up, end_record, group_looked_up,
    known_wire_type, redact_looked_up, set_group_vals, set_value, typed_key,
};
use super::*;
use crate::wire::RECORD_BYTES;
use crate::{HashEntry, HashKey, STR_KEY_BYTES, key_len_bit, str_hash_byte, str_hash_start};

/// Bytes of the record buffer ([`Walk::rec_buf`]); a power of two.
pub const FAST_RECORD_MAX: u32 = RECORD_BYTES as u32;
/// Calls of [`parse_field`] for one record: each takes a field, and up to [`PLAIN_AFTER`]
/// plain ones after it (`skip_plain`).
pub const FAST_FIELDS: u32 = 24;

/// Lookups one record's attributes may need on the fast path (more: the field walk).
pub const MAX_FAST_LOOKS: usize = 4;

const MASK: u32 = FAST_RECORD_MAX - 1;

/// A record attribute whose lookups wait until the record is parsed.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct FastLook {
    /// The attribute's field in the message: its tag, and its length from there (what a redact
    /// rule removes).
    pub kv_off: u32,
    pub kv_len: u32,
    /// The key and the string value in the record's copy (offsets from its start).
    pub key: u32,
    pub klen: u32,
    pub val: u32,
    pub vlen: u32,
    /// The value's kind: [`V_STRING`] (`val`, `vlen`), [`V_INT`] or [`V_BOOL`] (`num`), or
    /// [`V_OTHER`].
    pub vkind: u32,
    pub _pad: u32,
    pub num: u64,
}

/// Byte `i` of the record buffer.
#[inline(always)]
fn at(w: &Walk, i: u32) -> u32 {
    w.rec_buf[(i & MASK) as usize] as u32
}

/// A varint of one or two bytes at `i` that ends at or before `end`: (value, length), or
/// `None` for anything else.
#[inline(always)]
fn short_varint(w: &Walk, i: u32, end: u32) -> Option<(u32, u32)> {
    if i >= end {
        return None;
    }
    let b0 = at(w, i);
    if b0 < 0x80 {
        return Some((b0, 1));
    }
    if i + 1 >= end {
        return None;
    }
    let b1 = at(w, i + 1);
    if b1 >= 0x80 {
        return None;
    }
    Some(((b0 & 0x7f) | (b1 << 7), 2))
}

/// Takes the LogRecord whose frame was just pushed (contents `start..end`) whole, when it has
/// the usual shape: its facts are set as the field walk would set them and the record ends (on
/// to its body scan or its evaluation), all in this step. `false`: nothing of the walk changed.
#[inline(always)]
pub(super) fn fast_record<S: Source, E: Env>(
    w: &mut Walk,
    s: &mut S,
    env: &mut E,
    start: u32,
    end: u32,
) -> bool {
    let len = end - start;
    if w.fast == 0 || len > FAST_RECORD_MAX {
        return false;
    }
    // The copy is valid again once parse_begin sets its length.
    set(&mut w.f_len, 0);
    if !s.copy_record(start, len, &mut w.rec_buf) {
        return false;
    }
    w.f_sev = w.sev;
    w.f_start = start;
    if !env.parse_record(w, len) {
        return false;
    }
    w.sev = w.f_sev;
    w.fast_records += 1;
    if w.f_body != 0 {
        let (off, blen) = (start + w.f_body_off, w.f_body_len);
        set_value(w, R_BODY, V_STRING, off, blen);
    }
    if w.f_ev != 0 {
        w.ev_set = 1;
        w.ev_off = start + w.f_ev_off;
        w.ev_len = w.f_ev_len;
    }
    w.pos = end;
    if w.f_n_look > 0 {
        // Its attributes' lookups next, then its end.
        w.mode = MODE_FAST_LOOKUP;
    } else {
        // The record ends in this step too.
        let f = w.frame();
        end_record(w, f, env.rules());
    }
    true
}

/// [`MODE_FAST_LOOKUP`]: the lookups of the record just taken whole, then its end.
#[inline(always)]
pub(super) fn fast_lookup_step<E: Env>(w: &mut Walk, env: &mut E) -> Result<(), Error> {
    env.fast_lookups(w);
    let f = w.frame();
    end_record(w, f, env.rules());
    Ok(())
}

/// Parses the record of `len` bytes in [`Walk::rec_buf`] into the fast path's facts
/// (`f_sev`, `f_body*`, the lookups noted); `false` when it is not of the usual shape. Touches
/// nothing else. The kernel runs it as a global function, checked once on its own, with
/// [`parse_field`] as a `bpf_loop` callback.
#[inline(always)]
pub fn parse_record(w: &mut Walk, rs: &RuleSet, len: u32) -> bool {
    parse_begin(w, len);
    let mut n = 0;
    while n < FAST_FIELDS {
        if !parse_field(w, rs, len) {
            break;
        }
        n += 1;
    }
    parse_end(w, len)
}

/// Before the first [`parse_field`] of a record of `len` bytes.
#[inline(always)]
pub fn parse_begin(w: &mut Walk, len: u32) {
    set(&mut w.f_len, len);
    set(&mut w.f_pos, 0);
    set(&mut w.f_body, 0);
    set(&mut w.f_n_look, 0);
    set(&mut w.f_bad, 0);
    set(&mut w.f_ev, 0);
}

/// Parses the next field; `false` when parsing stops: at the record's end, or at a field not of
/// the usual shape (then [`parse_end`] says no).
#[inline(always)]
pub fn parse_field(w: &mut Walk, rs: &RuleSet, len: u32) -> bool {
    // Everything carried from field to field is in the walk's memory, so for the verifier the
    // ways through one field merge before the next.
    let pos = get(&w.f_pos);
    if pos >= len {
        return false;
    }
    if !fast_field(w, rs, pos, len) {
        set(&mut w.f_bad, 1);
        return false;
    }
    skip_plain(w, rs, len);
    // At the record's end, no call more.
    get(&w.f_pos) < len
}

/// After a field, up to [`PLAIN_AFTER`] more of the usual shape that need no lookup:
/// timestamps, `flags`, `severity_number` and `severity_text`, trace and span ids, the body,
/// attributes whose key length no rule names. Each is checked and sets what [`fast_field`]
/// would set. The kernel makes a call of [`parse_field`] a `bpf_loop` iteration, and a call
/// costs more than such a field: the usual record takes one. Anything else is left to the next
/// call, which checks it as always.
#[inline(always)]
fn skip_plain(w: &mut Walk, rs: &RuleSet, len: u32) {
    let mut k = 0;
    while k < PLAIN_AFTER {
        if !plain_field(w, rs, len) {
            return;
        }
        k += 1;
    }
}

/// Fields [`skip_plain`] takes after one.
const PLAIN_AFTER: u32 = 12;

/// Takes the field at the cursor if it is one [`skip_plain`] takes, and fits.
#[inline(always)]
fn plain_field(w: &mut Walk, rs: &RuleSet, len: u32) -> bool {
    let pos = get(&w.f_pos);
    if pos + 2 > len {
        return false;
    }
    let tag = at(w, pos);
    let next = if tag == 0x09 || tag == 0x59 {
        // time_unix_nano, observed_time_unix_nano: fixed64.
        pos + 9
    } else if tag == 0x45 {
        // flags: fixed32.
        pos + 5
    } else if tag == 0x10 && at(w, pos + 1) < 0x80 {
        // severity_number, one byte: as fast_field sets it.
        let v = at(w, pos + 1);
        w.f_sev = if v <= 24 { v } else { SEV_OUT_OF_RANGE as u32 };
        pos + 2
    } else if tag == 0x1a || tag == 0x4a || tag == 0x52 || tag == 0x2a || tag == 0x32 {
        // severity_text, trace_id, span_id, the body, an attribute, with a length of one or
        // two bytes: the body and the attribute as fast_field takes them, an attribute only
        // when no rule can look it up.
        let Some((l, m)) = short_varint(w, pos + 1, len) else {
            return false;
        };
        let start = launder(&mut w.scratch, pos + 1 + m);
        if l > len - start {
            return false;
        }
        let end = start + l;
        if tag == 0x2a {
            if !fast_body(w, start, end) {
                return false;
            }
        } else if tag == 0x32 {
            match attr_shape(w, start, end) {
                Some(a) if looked_up_lens(rs) & key_len_bit(a.klen) == 0 => {}
                _ => return false,
            }
        }
        end
    } else {
        return false;
    };
    if next > len {
        return false;
    }
    w.f_pos = launder(&mut w.scratch, next);
    true
}

/// Whether the whole record was parsed (fields past [`FAST_FIELDS`] were not).
#[inline(always)]
pub fn parse_end(w: &Walk, len: u32) -> bool {
    get(&w.f_bad) == 0 && get(&w.f_pos) == len
}

/// One field of the record at `pos` (of `len`): `false` when it is not of the usual shape.
#[inline(always)]
fn fast_field(w: &mut Walk, rs: &RuleSet, pos: u32, len: u32) -> bool {
    let tag = at(w, pos);
    if tag >= 0x80 {
        return false;
    }
    let field = (tag >> 3) as u64;
    let wt = (tag & 7) as u64;
    if field == 0 {
        return false;
    }
    let known = known_wire_type(K_RECORD, field);
    if known != u64::MAX && known != wt {
        return false;
    }
    let i = pos + 1;
    match wt {
        WT_VARINT => {
            let Some((v, m)) = short_varint(w, i, len) else {
                return false;
            };
            if field == 2 {
                w.f_sev = if v <= 24 { v } else { SEV_OUT_OF_RANGE as u32 };
            }
            w.f_pos = launder(&mut w.scratch, i + m);
        }
        WT_I64 => {
            if len - i < 8 {
                return false;
            }
            w.f_pos = launder(&mut w.scratch, i + 8);
        }
        WT_I32 => {
            if len - i < 4 {
                return false;
            }
            w.f_pos = launder(&mut w.scratch, i + 4);
        }
        WT_LEN => {
            let Some((l, m)) = short_varint(w, i, len) else {
                return false;
            };
            let m = launder(&mut w.scratch, m);
            let cstart = i + m;
            if l > len - cstart {
                return false;
            }
            let cend = cstart + l;
            w.f_pos = launder(&mut w.scratch, cend);
            if field == 5 {
                return fast_body(w, cstart, cend);
            }
            if field == 6 {
                return fast_attr(w, rs, pos, cstart, cend);
            }
            if field == 12 {
                // The last event_name wins.
                w.f_ev = 1;
                w.f_ev_off = cstart;
                w.f_ev_len = l;
            }
        }
        _ => return false,
    }
    true
}

/// A body that is exactly one `string_value` (as [`super::fields::single_string`] takes it).
#[inline(always)]
fn fast_body(w: &mut Walk, start: u32, end: u32) -> bool {
    if w.f_body != 0 || end - start < 2 || at(w, start) != 0x0a {
        return false;
    }
    let Some((l, m)) = short_varint(w, start + 1, end) else {
        return false;
    };
    let off = launder(&mut w.scratch, start + 1 + m);
    if off + l != end {
        return false;
    }
    w.f_body = 1;
    w.f_body_off = off;
    w.f_body_len = l;
    true
}

/// What [`attr_shape`] finds of an attribute: its key's length (the key starts 2 bytes into
/// the contents), where its AnyValue's contents start, the value's kind, a string's length, a
/// number.
#[derive(Copy, Clone)]
struct AttrShape {
    klen: u32,
    any: u32,
    vkind: u32,
    slen: u32,
    num: u64,
}

/// A KeyValue (contents `start..end` in the record's copy) of the KeyValue fast path's shape:
/// a key of one-byte length, then a value of one-byte length that is a string of one-byte
/// length, a bool or an int of one or two bytes, or a double. `None` for anything else.
#[inline(always)]
fn attr_shape(w: &Walk, start: u32, end: u32) -> Option<AttrShape> {
    if end - start < 6 || end - start > 2 * 127 || at(w, start) != 0x0a {
        return None;
    }
    let klen = at(w, start + 1);
    if klen >= 0x80 {
        return None;
    }
    let vtag = start + 2 + klen;
    if vtag + 4 > end || at(w, vtag) != 0x12 {
        return None;
    }
    let alen = at(w, vtag + 1);
    let any = vtag + 2;
    if !(2..0x80).contains(&alen) || any + alen != end {
        return None;
    }
    let t = at(w, any);
    let (vkind, slen, num) = if t == 0x0a {
        let slen = at(w, any + 1);
        if slen >= 0x80 || any + 2 + slen != end {
            return None;
        }
        (V_STRING, slen, 0)
    } else if t == 0x10 || t == 0x18 {
        // A bool or an int of one or two bytes that ends the value exactly.
        match short_varint(w, any + 1, end) {
            Some((v, m)) if any + 1 + m == end => {
                if t == 0x10 {
                    (V_BOOL, 0, (v != 0) as u64)
                } else {
                    (V_INT, 0, v as u64)
                }
            }
            _ => return None,
        }
    } else if t == 0x21 && any + 9 == end {
        (V_OTHER, 0, 0)
    } else {
        return None;
    };
    Some(AttrShape {
        klen,
        any,
        vkind,
        slen,
        num,
    })
}

/// A record attribute of the KeyValue fast path's shape (its field's tag at `tag`, its contents
/// `start..end`, offsets in the record). The lookups rules need of it are noted, made once the
/// whole record is parsed ([`fast_lookups`]).
#[inline(always)]
fn fast_attr(w: &mut Walk, rs: &RuleSet, tag: u32, start: u32, end: u32) -> bool {
    let Some(AttrShape {
        klen,
        any,
        vkind,
        slen,
        num,
    }) = attr_shape(w, start, end)
    else {
        return false;
    };
    // Only a key of a length the rules name may need a lookup: which ones is decided with
    // the lookups ([`fast_lookup`]), so that parsing has one way less a field.
    if looked_up_lens(rs) & key_len_bit(klen) == 0 {
        return true;
    }
    // SAFETY: plain loads and stores of fields of `w` (through memory, for the verifier).
    let n = unsafe { core::ptr::read_volatile(&w.f_n_look) } as usize;
    if n >= MAX_FAST_LOOKS {
        return false;
    }
    w.f_look[n] = FastLook {
        kv_off: w.f_start + tag,
        kv_len: end - tag,
        key: start + 2,
        klen,
        val: any + 2,
        vlen: slen,
        vkind,
        _pad: 0,
        num,
    };
    set(&mut w.f_n_look, n as u32 + 1);
    true
}

/// The key lengths some lookup of a record attribute may need ([`key_len_bit`]).
#[inline(always)]
fn looked_up_lens(rs: &RuleSet) -> u64 {
    rs.attr_key_lens | rs.redact_key_lens | rs.group_key_lens
}

/// Makes the lookups [`fast_attr`] noted for the record just parsed (for attributes a rule
/// looks up, the pair; for names redact rules remove, the key), as the field walk would: the
/// same condition bits, the same attributes to remove, in the same order. Each string is
/// hashed where it lies in the record's copy and looked up by its hash; a hit counts only when
/// its bytes are the same.
///
/// Every length is read from memory where it is compared (never kept in a register): for the
/// verifier, a loop that ends at an unknown length otherwise leaves that length known exactly,
/// differently at each of its exits, and everything after the loop is checked once per exit.
#[inline(always)]
pub fn fast_lookups<H: Hashes>(w: &mut Walk, rs: &RuleSet, slot: u8, h: &mut H) {
    let mut k = 0;
    while k < FAST_LOOKUP_STEPS {
        if k >= fast_lookup_steps(w) as usize {
            break;
        }
        fast_lookup(w, rs, k, slot, h);
        k += 1;
    }
}

/// Lookup steps a record can need: each kind of lookup ([`LOOK_ATTR`], [`LOOK_REDACT`],
/// [`LOOK_GROUP`]) of each noted attribute.
pub const FAST_LOOKUP_STEPS: usize = 3 * MAX_FAST_LOOKS;
const LOOK_ATTR: usize = 0;
const LOOK_REDACT: usize = 1;
const LOOK_GROUP: usize = 2;

/// The lookup steps the record just parsed needs: three for each attribute noted.
#[inline(always)]
pub fn fast_lookup_steps(w: &Walk) -> u32 {
    3 * get(&w.f_n_look)
}

/// Lookup step `step` of the record's ([`fast_lookup_steps`]): one kind of lookup
/// (`step % 3`) of noted attribute `step / 3`. Kinds are independent (each sets its own
/// facts), and each kind takes the attributes in order, so this sets what the field walk
/// sets. The kernel runs one step a `bpf_loop` iteration: one lookup a callback keeps its
/// paths few.
#[inline(always)]
pub fn fast_lookup<H: Hashes>(w: &mut Walk, rs: &RuleSet, step: usize, slot: u8, h: &mut H) {
    let kind = step % 3;
    // Through memory: the verifier does not follow a division, so the index is checked where
    // it is used.
    let k = launder(&mut w.scratch, (step / 3) as u32) as usize;
    if k >= get(&w.f_n_look) as usize {
        return;
    }
    let Some(&l) = w.f_look.get(k) else {
        return;
    };
    if kind == LOOK_ATTR && attr_looked_up(rs, l.klen, l.vkind, l.vlen) {
        let (kind, _) = typed_key(l.vkind, l.vlen);
        let key = HashKey {
            hash: hash_pair(w, k, kind, true),
            slot,
            kind,
            _pad0: 0,
            _pad1: 0,
        };
        if let Some(e) = h.hash_entry(&key)
            && same(w, k, e, true)
        {
            w.attr_bits |= e.bits;
        }
    } else if kind == LOOK_REDACT && redact_looked_up(rs, l.klen) {
        let key = HashKey {
            hash: hash_pair(w, k, STR_REDACT, false),
            slot,
            kind: STR_REDACT,
            _pad0: 0,
            _pad1: 0,
        };
        if let Some(e) = h.hash_entry(&key)
            && same(w, k, e, false)
        {
            let bits = e.bits;
            let r = get(&w.n_redact_attrs) as usize;
            if r < MAX_RECORD_REDACTS {
                w.redact_attrs[r] = RedactAttr {
                    off: get(&w.f_look[k].kv_off),
                    len: get(&w.f_look[k].kv_len),
                    bits,
                };
                set(&mut w.n_redact_attrs, r as u32 + 1);
            } else {
                w.redact_overflow = 1;
            }
        }
    } else if kind == LOOK_GROUP && group_looked_up(rs, l.klen) {
        let key = HashKey {
            hash: hash_pair(w, k, STR_GROUP, false),
            slot,
            kind: STR_GROUP,
            _pad0: 0,
            _pad1: 0,
        };
        if let Some(e) = h.hash_entry(&key)
            && same(w, k, e, false)
        {
            let bits = e.bits;
            let l = &w.f_look[k];
            let v = GroupVal {
                kind: get(&l.vkind),
                off: get(&w.f_start) + get(&l.val),
                len: get(&l.vlen),
                _pad: 0,
                num: l.num,
            };
            set_group_vals(w, bits, v);
        }
    }
}

/// A load from memory the compiler keeps as a load.
#[inline(always)]
fn get(v: &u32) -> u32 {
    // SAFETY: a plain load of a valid `u32`.
    unsafe { core::ptr::read_volatile(v) }
}

/// The length of noted attribute `k`'s value that its lookup hashes: its string (or an int's
/// 8 bytes, a bool's one) for a pair, none for a key alone.
#[inline(always)]
fn vlen_of(w: &Walk, k: usize, pair: bool) -> u32 {
    let l = &w.f_look[k % MAX_FAST_LOOKS];
    if !pair {
        0
    } else {
        typed_key(get(&l.vkind), get(&l.vlen)).1
    }
}

/// Byte `i` of noted attribute `k`'s value as its lookup hashes it: from the record's copy for
/// a string, from the number (little-endian) for an int or a bool.
#[inline(always)]
fn value_byte(w: &Walk, k: usize, i: u32) -> u32 {
    let l = &w.f_look[k % MAX_FAST_LOOKS];
    if get(&l.vkind) == V_STRING {
        at(w, get(&l.val) + i)
    } else {
        (l.num >> ((i & 7) * 8)) as u8 as u32
    }
}

/// The hash of noted attribute `k`'s key, and its value if `pair`.
#[inline(always)]
fn hash_pair(w: &Walk, k: usize, kind: u8, pair: bool) -> u64 {
    let l = &w.f_look[k % MAX_FAST_LOOKS];
    let h = str_hash_start(kind, get(&l.klen), vlen_of(w, k, pair));
    let h = hash_bytes(w, h, get(&l.key), &l.klen, MAX_ATTR_KEY_LEN as u32);
    let vkind = get(&l.vkind);
    if !pair {
        h
    } else if vkind == V_STRING {
        hash_bytes(w, h, get(&l.val), &l.vlen, MAX_ATTR_VALUE_LEN as u32)
    } else if vkind == V_INT {
        // Its 8 bytes, little-endian.
        l.num
            .to_le_bytes()
            .iter()
            .fold(h, |h, &b| str_hash_byte(h, b))
    } else if vkind == V_BOOL {
        str_hash_byte(h, l.num as u8)
    } else {
        h
    }
}

/// `h` on through the `*len` (at most `max`) bytes of the record's copy at `off`. The length
/// is read from memory where it is compared, as in [`fast_lookups`].
#[inline(always)]
fn hash_bytes(w: &Walk, mut h: u64, off: u32, len: &u32, max: u32) -> u64 {
    let mut i = 0;
    while i < max {
        if i >= get(len) {
            break;
        }
        h = str_hash_byte(h, at(w, off + i) as u8);
        i += 1;
    }
    h
}

/// Whether a hash hit holds the very key (and value, if `pair`) of noted attribute `k`.
#[inline(always)]
fn same(w: &mut Walk, k: usize, e: &HashEntry, pair: bool) -> bool {
    let k = k % MAX_FAST_LOOKS;
    let l = &w.f_look[k];
    if get(&e.klen) != get(&l.klen) || get(&e.vlen) != vlen_of(w, k, pair) {
        return false;
    }
    let mut i = 0;
    while i < MAX_ATTR_KEY_LEN as u32 {
        if i >= get(&e.klen) {
            break;
        }
        if e.bytes.get(i as usize).copied() != Some(at(w, get(&w.f_look[k].key) + i) as u8) {
            return false;
        }
        i += 1;
    }
    let mut i = 0;
    while i < MAX_ATTR_VALUE_LEN as u32 {
        if i >= get(&e.vlen) {
            break;
        }
        // Through memory: the index checked is the index used.
        let j = launder(&mut w.scratch, get(&e.klen) + i) as usize;
        if j >= STR_KEY_BYTES || e.bytes[j] as u32 != value_byte(w, k, i) {
            return false;
        }
        i += 1;
    }
    true
}

/// The `ATTR_HASHES` map as [`fast_lookups`] reads it.
pub trait Hashes {
    fn hash_entry(&mut self, key: &HashKey) -> Option<&HashEntry>;
}
