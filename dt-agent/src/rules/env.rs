//! Running the kernel's OTLP walker on the host, over a compiled rule set.

use std::collections::HashMap;

use dt_ebpf_common::walk::Env;
use dt_ebpf_common::{AcRow, RuleSet, STR_KEY_BYTES, StrKey};

use super::compile::Compiled;

/// The fields of a [`StrKey`] that identify it (`StrKey` itself is not `Hash`).
type KeyId = (u8, u8, u8, u32, [u8; STR_KEY_BYTES]);

fn key_id(key: &StrKey) -> KeyId {
    (key.slot, key.kind, key.klen, key.vlen, key.bytes)
}

/// A [`walk::Env`](Env) over a [`Compiled`] rule set, as rule set slot 0: the host-side
/// stand-in for the kernel's `RULESETS`, `STRINGS`, `AC`, `SAMPLES` and `RATES` maps.
///
/// Sampling is deterministic (match k of a rule is kept when k % N == 0, as in the kernel).
/// Rate limiting uses the same GCRA as the kernel, on the host's monotonic clock.
pub struct HostEnv<'a> {
    compiled: &'a Compiled,
    strings: HashMap<KeyId, u64>,
    samples: HashMap<u16, u64>,
    rates: HashMap<u16, u64>,
    epoch: std::time::Instant,
}

impl<'a> HostEnv<'a> {
    pub fn new(compiled: &'a Compiled) -> HostEnv<'a> {
        let strings = compiled
            .strings
            .iter()
            .map(|(key, bits)| (key_id(key), *bits))
            .collect();
        HostEnv {
            compiled,
            strings,
            samples: HashMap::new(),
            rates: HashMap::new(),
            epoch: std::time::Instant::now(),
        }
    }
}

impl Env for HostEnv<'_> {
    fn rules(&self) -> &RuleSet {
        &self.compiled.ruleset
    }

    fn slot(&self) -> u8 {
        0
    }

    fn lookup(&mut self, key: &StrKey) -> u64 {
        self.strings.get(&key_id(key)).copied().unwrap_or(0)
    }

    fn ac_row(&mut self, state: u32) -> Option<&AcRow> {
        self.compiled.ac.get(usize::try_from(state).ok()?)
    }

    fn sample(&mut self, slot: u16, n: u64) -> bool {
        let k = self.samples.entry(slot).or_insert(0);
        let keep = n <= 1 || (*k).is_multiple_of(n);
        *k += 1;
        keep
    }

    fn rate_limit(&mut self, slot: u16, per_second: u64) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        let interval = 1_000_000_000 / per_second.max(1);
        let burst = interval * per_second.saturating_sub(1);
        let tat = self.rates.entry(slot).or_insert(0);
        let base = (*tat).max(now);
        if base - now > burst {
            return false;
        }
        *tat = base + interval;
        true
    }
}
