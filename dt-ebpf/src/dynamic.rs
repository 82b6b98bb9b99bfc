//! States and triggers, shared by both hooks: which states are on, and a trigger's firing
//! (threshold, cooldown, states turned on, flushes asked for), decided here in the kernel with
//! compare-exchange so that concurrent matches on several CPUs fire once.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr,
};

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use dt_ebpf_common::{MAX_RECORDERS, MAX_STATES, Trigger, decide};

use crate::maps::{REC_STATE, STATE_DURATIONS, STATES, TRIGGERS};

/// Tries of an atomic update of a shared word before giving up (two CPUs updating the same
/// word at the same instant make a try fail; every try that fails means another CPU's
/// succeeded).
const CAS_TRIES: u32 = 64;

/// Applies `f` to the u64 at `p` atomically (a compare-exchange loop); returns the value it
/// replaced, or `None` if every try lost a race.
#[inline(always)]
pub fn atomic_update(p: *mut u64, f: impl Fn(u64) -> u64) -> Option<u64> {
    let mut tries = 0;
    while tries < CAS_TRIES {
        // SAFETY: an aligned u64 in map memory; an aligned 64-bit load is atomic.
        let old = unsafe { ptr::read_volatile(p) };
        if compare_exchange(p, old, f(old)) {
            return Some(old);
        }
        tries += 1;
    }
    None
}

/// Writes `new` to the u64 at `p` if it holds `old`, atomically; whether it did (BPF's atomic
/// compare-exchange: core's atomic types have no read-modify-write on the BPF target, and
/// LLVM 22 emits the fetch-add intrinsic without its fetch flag, so the old value would not
/// come back).
#[inline(always)]
pub fn compare_exchange(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: an aligned u64 in map memory.
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(p, old, new)
    };
    swapped
}

/// Adds `n` to the u64 at `p` atomically, without reading it back (BPF's atomic add). Every
/// counter the programs share is added to this way, per-CPU ones too: a program can be
/// interrupted on its CPU by another that adds to the same counter (`sock_ops` in a softirq
/// while `dt_msg` runs in a sender's context; any program under `preempt=full` or `lazy`),
/// and a plain read-add-write would lose one of the two.
#[inline(always)]
pub fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: an aligned u64 in map memory.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

/// Takes `n` from the u64 at `p` atomically (see [`atomic_add`]).
#[inline(always)]
pub fn atomic_sub(p: *mut u64, n: u64) {
    atomic_add(p, n.wrapping_neg());
}

/// Writes the states on now among `which` (bits of state slots) to `out`. `out` is map
/// memory, and the bits are gathered there, not in a register: a register that differs bit by
/// bit from one path to the next would make the verifier walk every combination.
#[inline(always)]
pub fn states_on(which: u64, out: *mut u64) {
    // SAFETY: `out` is an aligned u64 of a map value the caller owns for this run.
    unsafe { ptr::write_volatile(out, 0) };
    if which == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let mut i = 0u32;
    while i < MAX_STATES {
        if which & (1 << i) != 0
            && let Some(until) = STATES.get_ptr(i)
            // SAFETY: an aligned u64 of a map value (volatile: others write it).
            && unsafe { ptr::read_volatile(until) } > now
        {
            // SAFETY: as above.
            unsafe { ptr::write_volatile(out, ptr::read_volatile(out) | 1 << i) };
        }
        i += 1;
    }
}

/// A match of the trigger rule with counter slot `slot`: fires it if its threshold and
/// cooldown allow, once however many CPUs match at the same instant.
#[inline(always)]
pub fn trigger(slot: u16, t: &Trigger) {
    dt_fire(
        slot as u64,
        t.flush as u64,
        t.set_state,
        t.cooldown_ns,
        t.threshold as u64 | (t.within_ms as u64) << 32,
    );
}

/// [`trigger`] as a global BPF function (exported by the linker, see build.rs): the verifier
/// checks it once, on its own, with scalar arguments, instead of on every path that reaches a
/// call. `threshold`: the count in the low 32 bits, `within_ms` in the high.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dt_fire(
    slot: u64,
    flush: u64,
    set_state: u64,
    cooldown_ns: u64,
    threshold: u64,
) -> u64 {
    let Some(ts) = TRIGGERS.get_ptr_mut(slot as u32) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let count = threshold as u32;
    if count > 1 {
        let ms = now / 1_000_000;
        let within = (threshold >> 32) as u32;
        // SAFETY: fields of a map value, updated atomically.
        let window = unsafe { ptr::addr_of_mut!((*ts).window) };
        match atomic_update(window, |w| decide::threshold_count(w, ms, within).0) {
            Some(old) if decide::threshold_count(old, ms, within).1 == count => {}
            _ => return 0,
        }
    }
    let last = unsafe { ptr::addr_of_mut!((*ts).last_ns) };
    match atomic_update(last, |l| {
        if decide::cooled_down(l, now, cooldown_ns) {
            now
        } else {
            l
        }
    }) {
        Some(old) if decide::cooled_down(old, now, cooldown_ns) => {}
        _ => return 0,
    }
    atomic_add(unsafe { ptr::addr_of_mut!((*ts).fired) }, 1);
    let mut i = 0u32;
    while i < MAX_STATES {
        if set_state & (1 << i) != 0
            && let (Some(until), Some(d)) = (STATES.get_ptr_mut(i), STATE_DURATIONS.get(i))
        {
            // SAFETY: an aligned u64 of a map value; a plain store is atomic.
            unsafe { ptr::write_volatile(until, now + *d) };
        }
        i += 1;
    }
    let mut r = 0u32;
    while r < MAX_RECORDERS {
        if flush & (1 << r) != 0
            && let Some(st) = REC_STATE.get_ptr_mut(r)
        {
            atomic_add(unsafe { ptr::addr_of_mut!((*st).flush_req) }, 1);
        }
        r += 1;
    }
    1
}
