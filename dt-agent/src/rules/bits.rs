//! The condition bits and `STRINGS` keys a compiled rule set is made of: each distinct
//! condition value gets one bit of its condition word, and the strings the walker looks up are
//! keyed by kind, lengths and bytes.

use std::collections::HashMap;
use std::hash::Hash;

use dt_ebpf_common::{
    MAX_CONDS, NEED_ATTRS, NEED_RECORD, NEED_SERVICE, NEED_STATES, Rule, STR_ATTR, STR_REDACT,
    STR_SERVICE, StrKey,
};

/// Distinct values of one condition kind, each with its bit (in order of first use).
pub(super) struct CondBits<K> {
    /// What the values are called in diagnostics (`"body_contains values"`).
    what: &'static str,
    pub(super) bits: HashMap<K, u32>,
    pub(super) order: Vec<K>,
}

/// A new value did not fit in the 64 bits of a condition word.
pub(super) struct TooManyConds;

impl<K: Clone + Eq + Hash> CondBits<K> {
    pub(super) fn new(what: &'static str) -> Self {
        CondBits {
            what,
            bits: HashMap::new(),
            order: Vec::new(),
        }
    }

    /// The bit of `value`, and whether it is new.
    pub(super) fn bit(&mut self, value: &K) -> Result<(u32, bool), TooManyConds> {
        if let Some(&bit) = self.bits.get(value) {
            return Ok((bit, false));
        }
        if self.order.len() >= MAX_CONDS {
            return Err(TooManyConds);
        }
        let bit = self.order.len() as u32;
        self.bits.insert(value.clone(), bit);
        self.order.push(value.clone());
        Ok((bit, true))
    }

    pub(super) fn limit_message(&self) -> String {
        format!(
            "too many distinct {}: a rule set can use at most {MAX_CONDS}",
            self.what
        )
    }

    /// Each value with its bit, in bit order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, u64)> {
        self.order.iter().enumerate().map(|(i, k)| (k, 1u64 << i))
    }
}

/// The `STRINGS` key of a service name (at most `MAX_SERVICE_LEN` bytes).
pub(super) fn service_key(service: &str) -> StrKey {
    let mut key = StrKey::ZERO;
    key.kind = STR_SERVICE;
    key.vlen = service.len() as u32;
    key.bytes[..service.len()].copy_from_slice(service.as_bytes());
    key
}

/// What the walk must look up for `rules` (see `RuleSet::needs`).
pub(super) fn needs(rules: &[Rule]) -> u32 {
    rules.iter().fold(0, |n, r| {
        let mut n = n;
        if r.service != 0 {
            n |= NEED_SERVICE;
        }
        if r.attrs != 0 {
            n |= NEED_ATTRS;
        }
        if r.state_on | r.state_off != 0 {
            n |= NEED_STATES;
        }
        if r.recorder != 0 {
            n |= NEED_RECORD;
        }
        n
    })
}

/// The `STRINGS` key of an attribute name that redact rules remove.
pub(super) fn remove_key(name: &str) -> StrKey {
    let mut key = StrKey::ZERO;
    key.kind = STR_REDACT;
    key.klen = name.len() as u8;
    key.bytes[..name.len()].copy_from_slice(name.as_bytes());
    key
}

/// The `STRINGS` key of an attribute pair (key and value within their limits).
pub(super) fn attribute_key(name: &str, value: &str) -> StrKey {
    let mut key = StrKey::ZERO;
    key.kind = STR_ATTR;
    key.klen = name.len() as u8;
    key.vlen = value.len() as u32;
    let (k, v) = key.bytes.split_at_mut(name.len());
    k.copy_from_slice(name.as_bytes());
    v[..value.len()].copy_from_slice(value.as_bytes());
    key
}
