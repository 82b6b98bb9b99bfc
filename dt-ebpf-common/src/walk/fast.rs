//! The record fast path: a LogRecord of the usual shape taken whole in the step that reaches
//! it, from one copy of its bytes, instead of a step per field.
//!
//! It takes what encoders write for a log record: one-byte tags, length prefixes of one or two
//! bytes, varints of one or two bytes, a body that is one `string_value`, attributes of the
//! KeyValue fast path's shape ([`super::fields::plain_kv`], ints of one or two bytes) that no
//! rule looks up. Anything
//! else (and a record longer than [`FAST_RECORD_MAX`] or with more than [`FAST_FIELDS`]
//! fields) leaves the walk untouched, and the record is walked field by field: both ways set
//! the same facts, so what passes and what is edited does not depend on the way taken (the
//! host tests run both on every request they make).

use super::fields::{
    WT_I32, WT_I64, WT_LEN, WT_VARINT, attr_looked_up, end_record, known_wire_type,
    redact_looked_up, set_value,
};
use super::*;
use crate::wire::RECORD_BYTES;

/// Bytes of the record buffer ([`Walk::rec_buf`]); a power of two.
pub const FAST_RECORD_MAX: u32 = RECORD_BYTES as u32;
/// Fields of one record the fast path takes.
pub const FAST_FIELDS: u32 = 24;

const MASK: u32 = FAST_RECORD_MAX - 1;

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
    if w.fast == 0 || len > FAST_RECORD_MAX || !s.copy_record(start, len, &mut w.rec_buf) {
        return false;
    }
    w.f_sev = w.sev;
    if !env.parse_record(w, len) {
        return false;
    }
    w.sev = w.f_sev;
    if w.f_body != 0 {
        let (off, blen) = (start + w.f_body_off, w.f_body_len);
        set_value(w, R_BODY, V_STRING, off, blen);
    }
    // The record ends in this step too.
    let f = w.frame();
    end_record(w, f, env.rules());
    true
}

/// Parses the record of `len` bytes in [`Walk::rec_buf`] into the fast path's facts
/// (`f_sev`, `f_body*`); `false` when it is not of the usual shape. Touches nothing else: the
/// kernel runs it as a global function, checked once on its own.
#[inline(always)]
pub fn parse_record(w: &mut Walk, rs: &RuleSet, len: u32) -> bool {
    w.f_pos = 0;
    w.f_body = 0;
    let mut n = 0;
    while n < FAST_FIELDS {
        // Everything carried from field to field is in the walk's memory, so for the verifier
        // the ways through one field merge before the next.
        // SAFETY: a plain load of a field of `w` (volatile: never a value carried over).
        let pos = unsafe { core::ptr::read_volatile(&w.f_pos) };
        if pos >= len {
            break;
        }
        if !fast_field(w, rs, pos, len) {
            return false;
        }
        n += 1;
    }
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&w.f_pos) == len }
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
                return fast_attr(w, rs, cstart, cend);
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

/// A record attribute of the KeyValue fast path's shape whose end has nothing to do (no rule
/// looks it up).
#[inline(always)]
fn fast_attr(w: &mut Walk, rs: &RuleSet, start: u32, end: u32) -> bool {
    if end - start < 6 || end - start > 2 * 127 || at(w, start) != 0x0a {
        return false;
    }
    let klen = at(w, start + 1);
    if klen >= 0x80 {
        return false;
    }
    let vtag = start + 2 + klen;
    if vtag + 4 > end || at(w, vtag) != 0x12 {
        return false;
    }
    let alen = at(w, vtag + 1);
    let any = vtag + 2;
    if !(2..0x80).contains(&alen) || any + alen != end {
        return false;
    }
    let t = at(w, any);
    let (string, slen) = if t == 0x0a {
        let slen = at(w, any + 1);
        if slen >= 0x80 || any + 2 + slen != end {
            return false;
        }
        (true, slen)
    } else if t == 0x10 || t == 0x18 {
        // A bool or an int of one or two bytes that ends the value exactly.
        match short_varint(w, any + 1, end) {
            Some((_, m)) if any + 1 + m == end => (false, 0),
            _ => return false,
        }
    } else if t == 0x21 && any + 9 == end {
        (false, 0)
    } else {
        return false;
    };
    !(attr_looked_up(rs, klen, string, slen) || redact_looked_up(rs, klen))
}
