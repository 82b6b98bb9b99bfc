//! Running the kernel's OTLP walker on the host, over a compiled rule set.

use std::collections::HashMap;

use dt_ebpf_common::walk::{Env, GroupSink, Hashes, Walk, fast_lookups, note_groups};
use dt_ebpf_common::{
    AcTable, GroupNote, HashEntry, HashKey, MAX_GROUP_NOTES, MAX_STATES, RuleSet, STR_KEY_BYTES,
    StrKey, Trigger, TriggerState, decide, hashed_kind,
};

use super::compile::Compiled;

/// The fields of a [`StrKey`] that identify it (`StrKey` itself is not `Hash`).
type KeyId = (u8, u8, u8, u32, [u8; STR_KEY_BYTES]);

fn key_id(key: &StrKey) -> KeyId {
    (key.slot, key.kind, key.klen, key.vlen, key.bytes)
}

/// A [`walk::Env`](Env) over a [`Compiled`] rule set, as rule set slot 0: the host-side
/// stand-in for the kernel's `RULESETS`, `STRINGS`, `AC`, `SAMPLES` and `RATES` maps.
///
/// Sampling and rate limiting are the kernel's decisions ([`decide`]): match k of a sample rule
/// is kept when k % N == 0; the GCRA runs on the host's monotonic clock.
pub struct HostEnv<'a> {
    compiled: &'a Compiled,
    strings: HashMap<KeyId, u64>,
    hashes: HostHashes,
    ac: Box<AcTable>,
    samples: HashMap<u16, u64>,
    rates: HashMap<u16, u64>,
    epoch: std::time::Instant,
    /// Until when (ns on `epoch`'s clock, from 1) each state slot is on.
    pub states: [u64; MAX_STATES as usize],
    /// Each trigger rule's firing state, by counter slot; the flushes asked for, by recorder
    /// slot.
    pub triggers: HashMap<u16, TriggerState>,
    pub flushes: HashMap<u32, u64>,
    /// The grouped matches noted by the walks run with this environment, in order.
    pub notes: Vec<GroupNote>,
}

impl<'a> HostEnv<'a> {
    pub fn new(compiled: &'a Compiled) -> HostEnv<'a> {
        let strings = compiled
            .strings
            .iter()
            .map(|(key, bits)| (key_id(key), *bits))
            .collect();
        let hashes = HostHashes(
            compiled
                .strings
                .iter()
                .filter(|(key, _)| hashed_kind(key.kind))
                .map(|(key, bits)| {
                    let (hk, he) = HashEntry::of(key, *bits);
                    ((hk.kind, hk.hash), he)
                })
                .collect(),
        );
        HostEnv {
            compiled,
            strings,
            hashes,
            ac: compiled.ac_table(),
            samples: HashMap::new(),
            rates: HashMap::new(),
            epoch: std::time::Instant::now(),
            states: [0; MAX_STATES as usize],
            triggers: HashMap::new(),
            flushes: HashMap::new(),
            notes: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }
}

/// The notes of [`HostEnv`], bounded as the kernel's are.
struct NoteSink<'n>(&'n mut Vec<GroupNote>);

impl GroupSink for NoteSink<'_> {
    fn push(&mut self, note: &GroupNote) -> bool {
        if self.0.len() >= MAX_GROUP_NOTES {
            return false;
        }
        self.0.push(*note);
        true
    }
}

/// The `ATTR_HASHES` entries of slot 0, by kind and hash.
struct HostHashes(HashMap<(u8, u64), HashEntry>);

impl Hashes for HostHashes {
    fn hash_entry(&mut self, key: &HashKey) -> Option<&HashEntry> {
        self.0.get(&(key.kind, key.hash))
    }
}

impl Env for HostEnv<'_> {
    fn group_notes(&mut self, w: &mut Walk) -> bool {
        note_groups(w, &self.compiled.ruleset, &mut NoteSink(&mut self.notes))
    }

    fn fast_lookups(&mut self, w: &mut Walk) {
        fast_lookups(w, &self.compiled.ruleset, 0, &mut self.hashes);
    }

    fn rules(&self) -> &RuleSet {
        &self.compiled.ruleset
    }

    fn slot(&self) -> u8 {
        0
    }

    fn lookup(&mut self, key: &StrKey) -> u64 {
        self.strings.get(&key_id(key)).copied().unwrap_or(0)
    }

    fn ac_table(&self) -> Option<&AcTable> {
        Some(&self.ac)
    }

    fn draw_samples(&mut self, slot: u16, m: u32, n: u64) -> u64 {
        let k = self.samples.entry(slot).or_insert(0);
        let (next, base) = decide::sample_draw(*k, m, n);
        *k = next;
        base
    }

    fn take_tokens(&mut self, slot: u16, per_second: u64, m: u32) -> u32 {
        let now = self.now();
        let tat = self.rates.entry(slot).or_insert(0);
        let (next, granted) = decide::gcra_take(*tat, now, per_second, m);
        *tat = next;
        granted
    }

    fn states(&mut self, which: u64, out: &mut u64) {
        let now = self.now();
        *out = (0..MAX_STATES)
            .filter(|&i| which & (1 << i) != 0 && self.states[i as usize] > now)
            .fold(0, |bits, i| bits | 1 << i);
    }

    fn trigger(&mut self, slot: u16, t: &Trigger) {
        let now = self.now();
        let state = self.triggers.entry(slot).or_default();
        if t.threshold > 1 {
            let (window, n) = decide::threshold_count(state.window, now / 1_000_000, t.within_ms);
            state.window = window;
            if n != t.threshold {
                return;
            }
        }
        if !decide::cooled_down(state.last_ns, now, t.cooldown_ns) {
            return;
        }
        state.last_ns = now;
        state.fired += 1;
        for i in 0..MAX_STATES {
            if t.set_state & (1 << i) != 0 {
                let duration = self.compiled.state_durations[i as usize];
                self.states[i as usize] = now + duration;
            }
        }
        for i in 0..32 {
            if t.flush & (1 << i) != 0 {
                *self.flushes.entry(i).or_default() += 1;
            }
        }
    }
}
