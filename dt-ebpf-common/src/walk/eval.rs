//! Evaluation: the rules in order over the facts of the record just walked.

use super::plan::{drop_record, plan_candidate};
use super::*;

/// Evaluates the rules on the record just walked, per the contract: in order; `count` and
/// `redact` go on; `drop`, `sample` and `rate_limit` stop.
#[inline(always)]
pub(super) fn evaluate<E: Env>(w: &mut Walk, env: &mut E) -> Result<(), Error> {
    w.mode = MODE_FIELDS;
    w.records += 1;
    set(&mut w.n_redact_rules, 0);
    set(&mut w.redact_remove, 0);
    set(&mut w.redact_mask, 0);
    set(&mut w.n_fire, 0);
    set(&mut w.fired, 0);
    set(&mut w.n_grp_hits, 0);
    let which = env.rules().states;
    if env.rules().needs & NEED_STATES != 0 {
        env.states(which, &mut w.state_bits);
    } else {
        w.state_bits = 0;
    }
    let rs = env.rules();
    let n = if (rs.n_rules as usize) < MAX_RULES {
        rs.n_rules as usize
    } else {
        MAX_RULES
    };
    // The record's condition bits by `Rule::first` kind (0: none, a bit always there).
    set(&mut w.facts[0], u64::MAX);
    set(&mut w.facts[FIRST_BODY as usize], w.body_bits);
    set(&mut w.facts[FIRST_ATTRS as usize], w.attr_bits);
    set(&mut w.facts[FIRST_SERVICE as usize], w.svc_bits);
    let mut stop_at = u32::MAX;
    let mut i = 0usize;
    while i < MAX_RULES {
        if i >= n {
            break;
        }
        let r = &rs.rules[i];
        // Most rules are turned down by one bit the record lacks.
        let f = r.first;
        if w.facts[(f >> 6) as usize & 3] >> (f & 63) & 1 == 0 {
            i += 1;
            continue;
        }
        // The record's facts are read from the walk on every rule (volatile: kept as loads), so
        // the verifier carries nothing from one rule's comparisons to the next.
        // SAFETY: plain loads of fields of `w`.
        let (sev, body, attrs, svc, states) = unsafe {
            (
                core::ptr::read_volatile(&w.sev),
                core::ptr::read_volatile(&w.body_bits),
                core::ptr::read_volatile(&w.attr_bits),
                core::ptr::read_volatile(&w.svc_bits),
                core::ptr::read_volatile(&w.state_bits),
            )
        };
        if r.matches(sev, body, attrs, svc, states) {
            w.acc[i].matched += 1;
            let action = r.action;
            if action == ACTION_DROP || action == ACTION_SAMPLE || action == ACTION_RATE_LIMIT {
                stop_at = i as u32;
                break;
            }
            if action == ACTION_REDACT {
                note_redact(w, i, r)?;
            } else if action == ACTION_TRIGGER {
                note_fire(w, i);
            } else if r.group != 0 {
                note_group(w, i);
            }
        }
        i += 1;
    }
    // One decision after the loop, not one copy of it per rule.
    let rule = launder(&mut w.scratch, stop_at) as usize;
    if rule < MAX_RULES {
        let action = rs.rules[rule].action;
        if action != ACTION_SAMPLE && action != ACTION_RATE_LIMIT {
            drop_record(w, rule)?;
            return then_fire(w);
        }
        // Sample and rate_limit decide when the request commits: plan the record as a
        // candidate, with its redactions in case it is kept.
        plan_candidate(w, rule)?;
    }
    if w.n_redact_rules > 0 {
        w.mode = MODE_REDACT_ATTRS;
    }
    then_fire(w)
}

/// Goes through [`MODE_GROUP`] first when grouped count rules matched, and before that through
/// [`MODE_FIRE`] when trigger rules did.
#[inline(always)]
fn then_fire(w: &mut Walk) -> Result<(), Error> {
    // SAFETY: a plain load of a field of `w`.
    if unsafe { core::ptr::read_volatile(&w.n_grp_hits) } > 0 {
        w.after_group = w.mode;
        w.mode = MODE_GROUP;
    }
    // SAFETY: a plain load of a field of `w`.
    if unsafe { core::ptr::read_volatile(&w.n_fire) } > 0 {
        w.after_fire = w.mode;
        w.mode = MODE_FIRE;
    }
    Ok(())
}

/// Notes that grouped count rule `i` matched the record (through memory, as [`note_redact`]).
#[inline(always)]
fn note_group(w: &mut Walk, i: usize) {
    // SAFETY: plain loads and stores of fields of `w`.
    unsafe {
        use core::ptr::{read_volatile as get, write_volatile as set};
        let k = get(&w.n_grp_hits) as usize;
        // The agent refuses more grouped rules than there are places.
        if k < MAX_GROUP_RULES {
            set(&mut w.grp_hits[k], i as u8);
            set(&mut w.n_grp_hits, k as u32 + 1);
        }
    }
}

/// [`MODE_GROUP`]: notes the record's grouped matches ([`note_groups`]; the kernel runs it
/// as a global function), then goes on in the mode evaluation chose.
#[inline(always)]
pub(super) fn group_step<E: Env>(w: &mut Walk, env: &mut E) -> Result<(), Error> {
    if !env.group_notes(w) {
        return Err(Error::EditLimit);
    }
    w.n_grp_hits = 0;
    w.mode = w.after_group;
    Ok(())
}

/// Where [`note_groups`] keeps the notes.
pub trait GroupSink {
    /// `false` when the request has no room for another note.
    fn push(&mut self, note: &GroupNote) -> bool;
}

/// Notes each grouped count rule the record just evaluated matched (in rule order) with its
/// group value, to count when the request commits; `false` when the request has too many.
#[inline(always)]
pub fn note_groups<G: GroupSink>(w: &Walk, rs: &RuleSet, sink: &mut G) -> bool {
    let n = w.n_grp_hits as usize;
    let mut k = 0;
    while k < MAX_GROUP_RULES {
        if k >= n {
            break;
        }
        let i = w.grp_hits[k] as usize % MAX_RULES;
        let r = &rs.rules[i];
        if !sink.push(&group_value(w, i as u8, r.group, r.group_key)) {
            return false;
        }
        k += 1;
    }
    true
}

/// The group value of the record just evaluated for rule `rule`'s `group_by`.
#[inline(always)]
fn group_value(w: &Walk, rule: u8, group: u8, key: u8) -> GroupNote {
    let note = |kind: u8, a: u32, b: u32| GroupNote {
        a,
        b,
        rule,
        kind,
        _pad: 0,
    };
    let missing = note(GV_MISSING, 0, 0);
    match group {
        GROUP_SERVICE if w.svc_set != 0 => note(GV_STRING, w.svc_off, w.svc_len),
        GROUP_SEVERITY => note(GV_LEVEL, severity_level(w.sev), 0),
        GROUP_EVENT if w.ev_set != 0 && w.ev_len > 0 => note(GV_STRING, w.ev_off, w.ev_len),
        GROUP_ATTR => {
            let g = key as usize % MAX_GROUP_KEYS;
            if w.grp_seen >> g & 1 == 0 {
                return missing;
            }
            let v = w.grp[g];
            match v.kind {
                V_STRING => note(GV_STRING, v.off, v.len),
                V_INT => note(GV_INT, v.num as u32, (v.num >> 32) as u32),
                V_BOOL => note(GV_BOOL, v.num as u32, 0),
                _ => note(GV_OTHER, 0, 0),
            }
        }
        _ => missing,
    }
}

/// Notes that trigger rule `i` matched the record (through memory, as [`note_redact`]).
#[inline(always)]
fn note_fire(w: &mut Walk, i: usize) {
    // SAFETY: plain loads and stores of fields of `w`.
    unsafe {
        use core::ptr::{read_volatile as get, write_volatile as set};
        let k = get(&w.n_fire) as usize;
        if k < MAX_RECORD_FIRES {
            set(&mut w.fire[k], i as u8);
            set(&mut w.n_fire, k as u32 + 1);
        }
    }
}

/// Fires the next trigger rule the record matched (one a step, in rule order), after all its
/// rules were evaluated (so they judged it by the states as they were when its evaluation
/// began); then goes on in the mode evaluation chose.
#[inline(always)]
pub(super) fn fire_step<E: Env>(w: &mut Walk, env: &mut E) -> Result<(), Error> {
    // SAFETY: plain loads and stores of fields of `w`.
    let (k, n) = unsafe {
        (
            core::ptr::read_volatile(&w.fired) as usize,
            core::ptr::read_volatile(&w.n_fire) as usize,
        )
    };
    if k < n && k < MAX_RECORD_FIRES {
        let i = w.fire[k] as usize % MAX_RULES;
        let r = &env.rules().rules[i];
        let (slot, t) = (r.slot, r.trigger);
        env.trigger(slot, &t);
        w.fired = k as u32 + 1;
        return Ok(());
    }
    w.n_fire = 0;
    w.fired = 0;
    w.mode = w.after_fire;
    Ok(())
}
/// Notes that redact rule `i` matched the record. Through memory (volatile), not registers: a
/// count carried in a register from rule to rule would make the verifier check every later
/// rule once per possible count.
#[inline(always)]
pub(super) fn note_redact(w: &mut Walk, i: usize, r: &Rule) -> Result<(), Error> {
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
