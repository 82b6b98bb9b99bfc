//! Applying the plan back to front through an [`Editor`]: pops, masks, padded length prefixes
//! and the Content-Length.

use super::*;

/// The most calls of [`apply_step`] one request takes (the kernel's `bpf_loop` bound): the
/// head's growth; every removal and length rewrite; every mask's header and its chunks (each
/// mask's last chunk may be short); every insert's push, header and four attributes in chunks;
/// the Content-Length; and the last call, which finds nothing left.
pub const MAX_APPLY_STEPS: u32 = 1
    + (MAX_EDITS + MAX_FIXES) as u32
    + 2 * MAX_MASKS as u32
    + crate::MAX_REQUEST_CEILING / MASK_CHUNK
    + (enrich::MAX_INSERTS as u32) * (2 + 4 * (enrich::ENRICH_KV_MAX as u32 / MASK_CHUNK + 1))
    + 2;

/// Prepares [`apply_step`]: the cursors start at the last edit, mask, fix and insert. With
/// inserts, the Content-Length (or chunk size) may need more digits than it has: they are
/// pushed first, so that no edit is made unless the head can say the new length.
pub fn apply_start(w: &mut Walk) {
    w.apply_edit = w.n_edits;
    w.apply_fix = w.n_fixes;
    w.apply_mask = w.n_masks;
    w.apply_ins = w.n_ins;
    w.apply_done = 0;
    w.removed = 0;
    w.head_removed = 0;
    w.added = 0;
    w.shift = 0;
    w.ins_piece = 0;
    w.ins_poff = 0;
    w.ins_void = 0;
    w.head_grow = 0;
    if w.n_ins > 0 && w.cl_digits > 0 {
        let mut most = (w.body_end - w.body_start) as u64;
        let mut i = 0;
        while i < MAX_INSERTS {
            if i >= w.n_ins as usize {
                break;
            }
            most += w.ins[i].len as u64;
            i += 1;
        }
        let need = digits(most, w.cl_hex != 0);
        if need > w.cl_digits {
            w.head_grow = need - w.cl_digits;
        }
    }
}

/// Digits of `v` in decimal, or in hex.
#[inline(always)]
fn digits(v: u64, hex: bool) -> u32 {
    let base = if hex { 16 } else { 10 };
    let mut n = 1;
    let mut v = v / base;
    while n < 20 {
        if v == 0 {
            break;
        }
        v /= base;
        n += 1;
    }
    n
}

/// Applies one edit (or one chunk of a mask), back to front: removals, masks and length
/// rewrites in descending offset order, then the Content-Length. Returns `false` when everything
/// is applied.
///
/// A pop the kernel refuses is skipped: its records stay, and their drop is taken back from the
/// rule's results (they count as kept), so the request stays valid and the counters true.
#[inline(always)]
pub fn apply_step<D: Editor>(w: &mut Walk, ed: &mut D) -> bool {
    if w.head_grow > 0 && w.shift == 0 && w.ins_void == 0 {
        // First, the head's extra digits: every later offset moves by them.
        if ed.push(w.cl_off, w.head_grow) {
            w.shift = w.head_grow;
        } else {
            w.ins_void = 1;
        }
        return true;
    }
    let (p, x, m, q) = (w.apply_edit, w.apply_fix, w.apply_mask, w.apply_ins);
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
    let q_off = if q > 0 {
        w.ins[(q as usize - 1) % MAX_INSERTS].off as u64
    } else {
        0
    };
    // An insert goes at a ResourceLogs' end: every other edit of it is before, and the next
    // one's are after (an insert and a removal are never at one offset).
    if q > 0 && q_off > e_off && q_off >= m_off && q_off >= x_off {
        let ins = w.ins[(q as usize - 1) % MAX_INSERTS];
        enrich::insert_step(w, ed, ins);
        return true;
    }
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
        if fx.removed > 0 || fx.added > 0 {
            // The prefix was made reachable before any pop, and pops never split it.
            let v = (fx.value - fx.removed) as u64 + fx.added as u64;
            write_varint(ed, fx.off + w.shift, v, fx.len as u32);
        }
        return true;
    }
    if (w.removed > 0 || w.added > 0 || w.shift > 0) && w.cl_digits > 0 {
        rewrite_content_length(w, ed);
    }
    false
}

#[inline(always)]
pub(super) fn pop_edit<D: Editor>(w: &mut Walk, ed: &mut D, e: Edit) {
    if e.len == 0 {
        // Made void by the decisions.
        return;
    }
    if ed.pop(e.off + w.shift, e.len) {
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
pub(super) fn mask_chunk<D: Editor>(w: &mut Walk, ed: &mut D, span: Span) {
    let len = span.len & MASK_LEN;
    let hdr = span.len >> MASK_HDR_SHIFT;
    if len == 0 {
        // Made void by the decisions.
        w.apply_done = 0;
        w.apply_mask -= 1;
        return;
    }
    if hdr > 0 && w.apply_done == 0 {
        // A body replaced whole: the string's tag and length prefix first, its `*`s in the
        // next steps. Done when nothing follows the header, or when the kernel could not
        // reach it (then the body stays as it came).
        if whole_header(w, ed, span) && hdr < len {
            w.apply_done = hdr;
        } else {
            w.apply_done = 0;
            w.apply_mask -= 1;
        }
        return;
    }
    let done = w.apply_done;
    let n = if len - done < MASK_CHUNK {
        len - done
    } else {
        MASK_CHUNK
    };
    let off = span.off + w.shift + done;
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
    if done + n >= len {
        w.apply_done = 0;
        w.apply_mask -= 1;
    } else {
        w.apply_done = done + n;
    }
}

/// Writes the string tag and the padded length prefix of a body replaced whole (see
/// [`MASK_HDR_SHIFT`]); `false` when the kernel could not reach its bytes (nothing written).
#[inline(always)]
fn whole_header<D: Editor>(w: &mut Walk, ed: &mut D, span: Span) -> bool {
    let len = span.len & MASK_LEN;
    let hdr = span.len >> MASK_HDR_SHIFT;
    let off = span.off + w.shift;
    if !(2..=4).contains(&hdr) || hdr > len || !ed.reach(off, hdr) {
        w.edit_failures += 1;
        return false;
    }
    ed.put(off, 0x0a);
    write_varint(ed, off + 1, (len - hdr) as u64, hdr - 1);
    true
}

/// Writes `v` as a varint of exactly `n` bytes at `off` (padded with continuation bytes, which
/// decoders accept). `v` fits: it is never more than the value the prefix held before.
#[inline(always)]
pub(super) fn write_varint<D: Editor>(ed: &mut D, off: u32, v: u64, n: u32) {
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

/// Rewrites the Content-Length digits for the bytes removed and inserted: the new number
/// right-aligned in the digits (the old ones and any pushed before them), the leading spare
/// digits popped (or, if the kernel refuses, left as zeros). A chunk size is written in hex,
/// zero-padded to its width (chunk sizes may have leading zeros).
#[inline(always)]
pub(super) fn rewrite_content_length<D: Editor>(w: &mut Walk, ed: &mut D) {
    let new = (w.body_end - w.body_start) - w.removed + w.added;
    let (k, n) = (w.shift, w.cl_digits);
    if n == 0 || n > 10 || k > 10 {
        return;
    }
    let hex = w.cl_hex != 0;
    // The old digits take the low ones; digits pushed before them (`shift`), the rest. Each
    // part is reached on its own: they may lie in different pieces of the message.
    let rest = put_digits(ed, w.cl_off + k, n, new, hex);
    if k > 0 {
        put_digits(ed, w.cl_off, k, rest, hex);
    }
    // The digits kept: a decimal length in as few as it needs; a chunk size zero-padded to its
    // old width when it fits there (digits pushed for a growth that removals took back go).
    let (base, shift) = if hex { (16, 4) } else { (10, 0) };
    let mut need = 1u32;
    let mut v = if hex { new >> shift } else { new / base };
    while need < 20 {
        if v == 0 {
            break;
        }
        v = if hex { v >> shift } else { v / base };
        need += 1;
    }
    let keep = if hex && need < n { n } else { need };
    if keep < n + k && ed.pop(w.cl_off, n + k - keep) {
        w.head_removed = n + k - keep;
    }
}

/// Writes the low `n` digits of `v` (decimal, or hex), right-aligned at `off`; returns `v`
/// without them.
#[inline(always)]
fn put_digits<D: Editor>(ed: &mut D, off: u32, n: u32, v: u32, hex: bool) -> u32 {
    let mut v = v;
    if n == 0 || n > 10 || !ed.reach(off, n) {
        return v;
    }
    let mut k = 0u32;
    if hex {
        while k < 10 {
            if k >= n {
                break;
            }
            let d = (v & 15) as u8;
            ed.put(
                off + (n - 1 - k),
                if d < 10 { b'0' + d } else { b'a' + d - 10 },
            );
            v >>= 4;
            k += 1;
        }
    } else {
        while k < 10 {
            if k >= n {
                break;
            }
            ed.put(off + (n - 1 - k), b'0' + (v % 10) as u8);
            v /= 10;
            k += 1;
        }
    }
    v
}
