//! Running the kernel's OTLP walker on the host, over a compiled rule set.

use std::collections::HashMap;

use dt_ebpf_common::{AcRow, RuleSet, STR_KEY_BYTES, StrKey};
use dt_ebpf_common::{decide, walk::Env};

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

    fn draw_samples(&mut self, slot: u16, m: u32, n: u64) -> u64 {
        let k = self.samples.entry(slot).or_insert(0);
        let (next, base) = decide::sample_draw(*k, m, n);
        *k = next;
        base
    }

    fn take_tokens(&mut self, slot: u16, per_second: u64, m: u32) -> u32 {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        let tat = self.rates.entry(slot).or_insert(0);
        let (next, granted) = decide::gcra_take(*tat, now, per_second, m);
        *tat = next;
        granted
    }
}
