//! The edit plan: drops, sample and rate_limit candidates and redactions, recorded while walking;
//! and the decisions on candidates, taken once the request is known to commit.

use super::*;

/// Plans the removal of the record just evaluated, dropped by rule `rule`.
#[inline(always)]
pub(super) fn drop_record(w: &mut Walk, rule: usize) -> Result<(), Error> {
    let off = w.rec_off;
    let len = w.rec_end - w.rec_off;
    // The record frame is already popped: depth points at the ScopeLogs, the ResourceLogs is
    // one above.
    let rl_fix = w.fix_of(w.depth - 1)?;
    let scope_fix = w.fix_of(w.depth)?;
    // Records a redact rule matched before the drop are not merged with others: a recorder
    // skips them (see `Edit::matched_redact`).
    let redacted = (w.n_redact_rules > 0) as u16;
    let n = w.n_edits as usize;
    let mut merged = false;
    if n > 0 {
        let last = &mut w.edits[(n - 1) % MAX_EDITS];
        if last.records > 0
            && last.off + last.len == off
            && last.rule as usize == rule
            && last.fix0 == scope_fix
            && last.cand == 0
            && last.ordinal == redacted
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
            ordinal: redacted,
            svc_off: w.svc_off,
            svc_len: svc_len(w),
        })?;
    }
    let a = &mut w.acc[rule % MAX_RULES];
    a.dropped += 1;
    a.dropped_bytes += len as u64;
    w.records_dropped += 1;
    w.bytes_dropped += len;
    Ok(())
}

/// The length of the ResourceLogs' `service.name` (0 when it has none that is a string).
#[inline(always)]
fn svc_len(w: &Walk) -> u32 {
    if w.svc_set != 0 { w.svc_len } else { 0 }
}

/// Plans the record just evaluated as a candidate of sample or rate_limit rule `rule`: an edit
/// that removes it, made void at commit if the decision keeps it.
#[inline(always)]
pub(super) fn plan_candidate(w: &mut Walk, rule: usize) -> Result<(), Error> {
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
        svc_off: w.svc_off,
        svc_len: svc_len(w),
    })?;
    w.n_cands += 1;
    w.rec_cand = 1;
    Ok(())
}

/// The kept record just evaluated matched redact rules: count them (for a candidate, note them
/// to count if it is kept), and plan the removal of the attributes they name.
#[inline(always)]
pub(super) fn redact_attrs_step(w: &mut Walk) -> Result<(), Error> {
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
                svc_off: 0,
                svc_len: 0,
            })?;
        }
        k += 1;
    }
    Ok(())
}

/// ... and the masking of its string bodies.
#[inline(always)]
pub(super) fn redact_bodies_step(w: &mut Walk) -> Result<(), Error> {
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

pub(super) const DECIDE_RULES: u32 = 0;
pub(super) const DECIDE_EDITS: u32 = 1;
pub(super) const DECIDE_MASKS: u32 = 2;
pub(super) const DECIDE_DONE: u32 = 3;
pub(super) const NO_EDIT: u32 = u32::MAX;

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
pub(super) fn decide_rule<E: Env>(w: &mut Walk, env: &mut E) {
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
pub(super) fn decide_edit<E: Env>(w: &mut Walk, env: &mut E) {
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
    // Now a drop: its `ordinal` says whether a redact rule matched the record (see
    // `Edit::matched_redact`).
    w.edits[k].ordinal = e.matched_redact() as u16;
    w.acc[rule].dropped += 1;
    w.acc[rule].dropped_bytes += e.len as u64;
    w.records_dropped += 1;
    w.bytes_dropped += e.len;
    w.cut_end = e.off + e.len;
    let last = w.last_drop;
    if last != NO_EDIT {
        let l = &mut w.edits[last as usize % MAX_EDITS];
        if l.records > 0
            && l.off + l.len == e.off
            && l.rule == e.rule
            && l.fix0 == e.fix0
            && l.matched_redact() == e.matched_redact()
        {
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
pub(super) fn decide_mask(w: &mut Walk) {
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
