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
/// stand-in for the kernel's `RULESETS`, `STRINGS` and `AC` maps.
pub struct HostEnv<'a> {
    compiled: &'a Compiled,
    strings: HashMap<KeyId, u64>,
}

impl<'a> HostEnv<'a> {
    pub fn new(compiled: &'a Compiled) -> HostEnv<'a> {
        let strings = compiled
            .strings
            .iter()
            .map(|(key, bits)| (key_id(key), *bits))
            .collect();
        HostEnv { compiled, strings }
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
}
