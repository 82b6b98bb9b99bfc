//! `[enrich]`: the resource attributes the kernel adds to every walked request's Resources.
//!
//! Each ResourceLogs whose Resource lacks some of the listed keys gets, at the end of its
//! contents, one more `resource` field holding the missing attributes (decoders merge a repeated
//! message field, so the Resource reads as the sender's attributes followed by these). The
//! ResourceLogs' length prefix grows in place (a padded varint of its width: a ResourceLogs
//! whose new length would not fit it goes without, counted `edit_failures`), and so does the
//! Content-Length or chunk size (more digits are pushed before anything else is applied).
//!
//! The attributes are encoded once a request ([`Walk::ekv`], by the side that knows the sender),
//! and written piece by piece where they go when the plan is applied.

use super::*;
use crate::{
    CgroupIds, ENRICH_CONTAINER, ENRICH_HOST, ENRICH_KEYS, ENRICH_PID, ENRICH_POD, EnrichStr,
};

/// Bytes of one encoded attribute ([`Walk::ekv`]): a `KeyValue` field, tag and length included
/// (a power of two).
pub const ENRICH_KV_MAX: usize = 128;
/// Longest value of a string attribute added (host names are at most 64 bytes on Linux;
/// container ids 64 hex digits; pod uids 36).
pub const ENRICH_VALUE_MAX: usize = 64;
/// Inserts (ResourceLogs enriched) one request may carry; the ResourceLogs after them go
/// without (counted `edit_failures`).
pub const MAX_INSERTS: usize = 64;

/// One planned insert: `len` bytes at `off` (the end of a ResourceLogs' contents): a field
/// header (`hdr`) then the attributes of `bits`, in bit order.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Insert {
    pub off: u32,
    pub len: u32,
    /// The fix of the ResourceLogs' length prefix.
    pub fix: u16,
    pub bits: u8,
    pub hdr_len: u8,
    pub hdr: [u8; 4],
}

/// Encodes the attributes of `want` (`ENRICH_*` bits) the sender has values for into the
/// walk ([`Walk::ekv`]), once a request: its pid (always), the host name, and the container id
/// and pod uid of its cgroup when it names them.
#[inline(always)]
pub fn prepare_enrich(
    w: &mut Walk,
    want: u32,
    pid: u32,
    host: Option<&EnrichStr>,
    cgroup: Option<&CgroupIds>,
) {
    let mut have = 0;
    if want & ENRICH_PID != 0 {
        w.ekv_len[0] = encode_kv(
            &mut w.ekv[0],
            0,
            true,
            pid as u64,
            &[0; ENRICH_VALUE_MAX],
            0,
        );
        have |= ENRICH_PID;
    }
    if want & ENRICH_HOST != 0
        && let Some(h) = host
        && h.len > 0
    {
        w.ekv_len[1] = encode_kv(&mut w.ekv[1], 1, false, 0, &h.bytes, h.len);
        have |= ENRICH_HOST;
    }
    if let Some(c) = cgroup {
        if want & ENRICH_CONTAINER != 0 && c.container.len > 0 {
            let v = &c.container;
            w.ekv_len[2] = encode_kv(&mut w.ekv[2], 2, false, 0, &v.bytes, v.len);
            have |= ENRICH_CONTAINER;
        }
        if want & ENRICH_POD != 0 && c.pod.len > 0 {
            let v = &c.pod;
            w.ekv_len[3] = encode_kv(&mut w.ekv[3], 3, false, 0, &v.bytes, v.len);
            have |= ENRICH_POD;
        }
    }
    w.enrich_have = have;
}

/// Writes a varint at `out[at..]` (at most 10 bytes); returns its length.
#[inline(always)]
fn put_varint(out: &mut [u8; ENRICH_KV_MAX], at: usize, v: u64) -> usize {
    let mut v = v;
    let mut i = 0;
    while i < 10 {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if let Some(o) = out.get_mut(at + i) {
            *o = if v != 0 { b | 0x80 } else { b };
        }
        i += 1;
        if v == 0 {
            break;
        }
    }
    i
}

/// Bytes of `v` as a varint.
#[inline(always)]
pub fn varint_len(v: u64) -> u32 {
    let mut n = 1;
    let mut v = v >> 7;
    while n < 10 {
        if v == 0 {
            break;
        }
        v >>= 7;
        n += 1;
    }
    n
}

/// Encodes the attribute field of key `ENRICH_KEYS[k]`: `0x0a len KeyValue{0x0a klen key
/// 0x12 alen AnyValue}`, the AnyValue an `int_value` (`num`) when `int`, else the string of the
/// `vlen` bytes of `value`. Returns its length.
#[inline(always)]
pub fn encode_kv(
    out: &mut [u8; ENRICH_KV_MAX],
    k: usize,
    int: bool,
    num: u64,
    value: &[u8; ENRICH_VALUE_MAX],
    vlen: u32,
) -> u32 {
    let key = ENRICH_KEYS[k & 3];
    let vlen = (vlen as usize).min(ENRICH_VALUE_MAX);
    // AnyValue: tag, then the varint or the string's length and bytes.
    let av = if int {
        1 + varint_len(num) as usize
    } else {
        1 + varint_len(vlen as u64) as usize + vlen
    };
    let kv = 2 + key.len() + 1 + varint_len(av as u64) as usize + av;
    let mut at = 0;
    out[0] = 0x0a;
    at += 1;
    at += put_varint(out, at, kv as u64);
    set_byte(out, at, 0x0a);
    set_byte(out, at + 1, key.len() as u8);
    at += 2;
    let mut i = 0;
    while i < 12 {
        if i < key.len() {
            set_byte(out, at + i, key[i]);
        }
        i += 1;
    }
    at += key.len();
    set_byte(out, at, 0x12);
    at += 1;
    at += put_varint(out, at, av as u64);
    if int {
        set_byte(out, at, 0x18);
        at += 1;
        at += put_varint(out, at, num);
    } else {
        set_byte(out, at, 0x0a);
        at += 1;
        at += put_varint(out, at, vlen as u64);
        let mut i = 0;
        while i < ENRICH_VALUE_MAX {
            if i >= vlen {
                break;
            }
            set_byte(out, at + i, value[i]);
            i += 1;
        }
        at += vlen;
    }
    at as u32
}

#[inline(always)]
fn set_byte(out: &mut [u8; ENRICH_KV_MAX], at: usize, b: u8) {
    if let Some(o) = out.get_mut(at) {
        *o = b;
    }
}

/// The ResourceLogs of frame `f` (at depth `d`) lacks the attributes `bits`: plans their
/// insert at its end, and its length prefix's growth.
#[inline(always)]
pub(super) fn plan_insert(w: &mut Walk, f: Frame, d: u32, bits: u32) -> Result<(), Error> {
    let mut r = 0u32;
    let mut k = 0;
    while k < 4 {
        if bits >> k & 1 != 0 {
            r += w.ekv_len[k];
        }
        k += 1;
    }
    let hdr_len = 1 + varint_len(r as u64);
    let len = hdr_len + r;
    // The prefix keeps its width: the new length must fit it (removals, not known yet, only
    // shorten it).
    let width = f.prefix_len as u32;
    let max = if width >= 5 {
        u32::MAX as u64
    } else {
        (1u64 << (7 * width)) - 1
    };
    let n = w.n_ins as usize;
    if (f.end - f.start) as u64 + len as u64 > max || n >= MAX_INSERTS {
        // Its new length would not fit its prefix, or the request has enough inserts: this
        // ResourceLogs goes without (counted `edit_failures`, as an insert the kernel refuses
        // memory for), and the rest of the request is filtered as usual.
        w.edit_failures += 1;
        return Ok(());
    }
    let fix = w.fix_of(d)?;
    let fx = &mut w.fixes[fix as usize % MAX_FIXES];
    fx.added += len as u16;
    let mut hdr = [0x0a, 0, 0, 0];
    let mut v = r;
    let mut i = 1;
    while i < 4 {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        hdr[i] = if v != 0 { b | 0x80 } else { b };
        i += 1;
        if v == 0 {
            break;
        }
    }
    w.ins[n % MAX_INSERTS] = Insert {
        off: f.end,
        len,
        fix,
        bits: bits as u8,
        hdr_len: hdr_len as u8,
        hdr,
    };
    w.n_ins = n as u32 + 1;
    Ok(())
}

/// Applies the next piece of insert `ins` (the last one not yet done): first the push of its
/// bytes, then its header and each attribute, at most [`MASK_CHUNK`] bytes a step.
#[inline(always)]
pub(super) fn insert_step<D: Editor>(w: &mut Walk, ed: &mut D, ins: Insert) {
    let piece = w.ins_piece;
    if piece == 0 {
        // The push. Refused (or the head could not grow): the attributes are not added, and
        // the ResourceLogs keeps its length.
        let at = ins.off + w.shift;
        if w.ins_void != 0 || !ed.push(at, ins.len) {
            w.edit_failures += 1;
            let fx = &mut w.fixes[ins.fix as usize % MAX_FIXES];
            fx.added -= ins.len as u16;
            w.apply_ins -= 1;
            return;
        }
        w.added += ins.len;
        w.ins_pos = at;
        w.ins_poff = 0;
        w.ins_piece = 1;
        return;
    }
    // Piece 1: the header; pieces 2..=5: the attributes of bits 0..=3.
    let (len, k) = if piece == 1 {
        (ins.hdr_len as u32, 4)
    } else {
        let k = (piece - 2) as usize & 3;
        let len = if ins.bits >> k & 1 != 0 {
            w.ekv_len[k]
        } else {
            0
        };
        (len, k)
    };
    let done = w.ins_poff;
    let n = if len - done.min(len) < MASK_CHUNK {
        len - done.min(len)
    } else {
        MASK_CHUNK
    };
    if n > 0 {
        let pos = w.ins_pos;
        if ed.reach(pos, n) {
            let mut i = 0u32;
            while i < MASK_CHUNK {
                if i >= n {
                    break;
                }
                let j = (done + i) as usize;
                let b = if k == 4 {
                    ins.hdr[j & 3]
                } else {
                    w.ekv[k & 3][j & (ENRICH_KV_MAX - 1)]
                };
                ed.put(pos + i, b);
                i += 1;
            }
        } else {
            w.edit_failures += 1;
        }
        w.ins_pos = pos + n;
    }
    if done + n >= len {
        w.ins_poff = 0;
        if piece >= 5 {
            w.ins_piece = 0;
            w.apply_ins -= 1;
        } else {
            w.ins_piece = piece + 1;
        }
    } else {
        w.ins_poff = done + n;
    }
}
