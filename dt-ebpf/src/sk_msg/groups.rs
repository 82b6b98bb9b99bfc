//! Grouped counters: once a request commits (its plan decided, nothing applied yet), each
//! grouped match the walk noted (`GroupNotes`, in socket storage) is counted in `GROUPS` under
//! its rule's counter slot and its group value, read from the message as it still is.
//!
//! A value is counted exactly, with an atomic add on its entry. A rule's distinct values are
//! bounded by its `max_groups`: a new value first reserves one in `GROUP_COUNT` (compare-
//! exchange), then inserts its entry (`BPF_NOEXIST`); a CPU that loses the insert race to the
//! same value gives its reservation back and adds to the winner's entry. A value that finds no
//! room (the rule's `max_groups` reached, or the map full) counts under `__other__`.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE, sk_msg_md},
    helpers::generated::{bpf_loop, bpf_sk_storage_get},
};
use dt_ebpf_common::{
    GV_BOOL, GV_INT, GV_LEVEL, GV_OTHER, GV_STRING, GroupKey, GroupNotes, MAX_GROUP_NOTES,
    MAX_GROUP_VALUE, MAX_RULES, NEED_GROUPS, RuleSet, SockState,
};

use super::Window;
use crate::{
    dynamic::{atomic_add, atomic_update},
    maps::{GROUP_COUNT, GROUP_NOTES, GROUPS},
};

const EEXIST: i32 = 17;

/// The socket's notes (null when they can't be had); `start`: emptied, for a new walk.
#[inline(always)]
pub(super) fn notes_of(msg: *mut sk_msg_md, start: bool) -> *mut GroupNotes {
    let sk = unsafe { (*msg).__bindgen_anon_3.sk };
    if sk.is_null() {
        return ptr::null_mut();
    }
    let p = unsafe {
        bpf_sk_storage_get(
            ptr::from_ref(&GROUP_NOTES).cast_mut().cast(),
            sk.cast(),
            ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    } as *mut GroupNotes;
    if start && !p.is_null() {
        unsafe { (*p).n = 0 };
    }
    p
}

#[repr(C)]
struct GroupCtx {
    src: Window,
    rs: &'static RuleSet,
    notes: *mut GroupNotes,
}

/// Counts the notes of a request that commits. Never changes the request.
#[inline(always)]
pub(super) fn count(msg: *mut sk_msg_md, st: *mut SockState, rs: &'static RuleSet, limit: u32) {
    if rs.needs & NEED_GROUPS == 0 {
        return;
    }
    let notes = notes_of(msg, false);
    if notes.is_null() {
        return;
    }
    let n = unsafe { (*notes).n };
    if n == 0 {
        return;
    }
    let mut c = GroupCtx {
        src: Window::new(msg, st, limit),
        rs,
        notes,
    };
    unsafe {
        bpf_loop(
            n.min(MAX_GROUP_NOTES as u32),
            count_cb as *mut c_void,
            ptr::from_mut(&mut c).cast(),
            0,
        );
    }
}

extern "C" fn count_cb(i: u64, ctx: *mut c_void) -> i64 {
    let c = unsafe { &mut *(ctx as *mut GroupCtx) };
    let notes = unsafe { &mut *c.notes };
    let note = notes.notes[i as usize % MAX_GROUP_NOTES];
    let rule = &c.rs.rules[note.rule as usize % MAX_RULES];
    let slot = rule.slot as u32;
    let key = &mut notes.key;
    zero(key);
    key.slot = slot;
    key.kind = note.kind;
    match note.kind {
        GV_STRING => {
            let cut = note.b > MAX_GROUP_VALUE as u32;
            let len = if cut { MAX_GROUP_VALUE as u32 } else { note.b };
            key.len = len as u8;
            key.cut = cut as u8;
            if len > 0 && !c.src.copy_out(note.a, len, &mut key.bytes) {
                // The value can't be read (never seen: the walk read it): counted apart.
                zero(key);
                key.slot = slot;
                key.kind = GV_OTHER;
            }
        }
        // Ints and bools are counted by their text, as they are shown: the int 503 and the
        // string "503" are one group.
        GV_INT => {
            let v = ((note.b as u64) << 32 | note.a as u64) as i64;
            key.kind = GV_STRING;
            key.len = decimal(v, &mut key.bytes) as u8;
        }
        GV_BOOL => {
            key.kind = GV_STRING;
            let text: &[u8] = if note.a != 0 { b"true" } else { b"false" };
            let mut j = 0;
            while j < 5 {
                if j < text.len() {
                    key.bytes[j] = text[j];
                }
                j += 1;
            }
            key.len = text.len() as u8;
        }
        GV_LEVEL => {
            key.bytes[0] = note.a as u8;
            key.len = 1;
        }
        _ => {}
    }
    bump(key, slot, rule.max_groups as u64);
    0
}

/// Writes `v` in decimal at the start of `out`; returns its length (at most 20).
#[inline(always)]
fn decimal(v: i64, out: &mut [u8; MAX_GROUP_VALUE]) -> u32 {
    let neg = v < 0;
    let mut m = v.unsigned_abs();
    let mut digits = 1;
    let mut t = m / 10;
    while digits < 20 {
        if t == 0 {
            break;
        }
        t /= 10;
        digits += 1;
    }
    let len = digits + neg as u32;
    if neg {
        out[0] = b'-';
    }
    let mut i = 0;
    while i < 20 {
        if i >= digits {
            break;
        }
        out[((len - 1 - i) & (MAX_GROUP_VALUE as u32 - 1)) as usize] = b'0' + (m % 10) as u8;
        m /= 10;
        i += 1;
    }
    len
}

/// Zeroes a key word by word (a plain fill would become a `memset` call).
#[inline(always)]
fn zero(key: &mut GroupKey) {
    let p = ptr::from_mut(key).cast::<u64>();
    let mut i = 0;
    while i < size_of::<GroupKey>() / 8 {
        unsafe { ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Counts one match under `key`, or under `__other__` when a new value finds no room.
// `&*key`: the helpers read the key where it is, in map memory, not from a copy on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn bump(key: &mut GroupKey, slot: u32, max: u64) {
    if let Some(p) = GROUPS.get_ptr_mut(&*key) {
        atomic_add(p, 1);
        return;
    }
    if key.kind == GV_STRING || key.kind == GV_INT || key.kind == GV_BOOL || key.kind == GV_LEVEL {
        let Some(count) = GROUP_COUNT.get_ptr_mut(slot) else {
            return;
        };
        let reserved =
            matches!(atomic_update(count, |n| if n < max { n + 1 } else { n }), Some(n) if n < max);
        if reserved {
            match GROUPS.insert(&*key, 1, BPF_NOEXIST as u64) {
                Ok(()) => return,
                Err(e) => {
                    atomic_update(count, |n| n.saturating_sub(1));
                    if -e == EEXIST
                        && let Some(p) = GROUPS.get_ptr_mut(&*key)
                    {
                        atomic_add(p, 1);
                        return;
                    }
                }
            }
        }
        zero(key);
        key.slot = slot;
        key.kind = GV_OTHER;
    }
    // `__missing__` and `__other__`: the agent creates them with the rule; made here if not.
    if let Some(p) = GROUPS.get_ptr_mut(&*key) {
        atomic_add(p, 1);
    } else if GROUPS.insert(&*key, 1, BPF_NOEXIST as u64).is_err()
        && let Some(p) = GROUPS.get_ptr_mut(&*key)
    {
        atomic_add(p, 1);
    }
}
