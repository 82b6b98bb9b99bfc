//! The condition bits and `STRINGS` keys a compiled rule set is made of: each distinct
//! condition value gets one bit of its condition word, and the strings the walker looks up are
//! keyed by kind, lengths and bytes.

use std::collections::HashMap;
use std::hash::Hash;

use super::model::AttrValue;

use dt_ebpf_common::{
    MAX_CONDS, NEED_ATTRS, NEED_RECORD, NEED_SERVICE, NEED_STATES, Rule, STR_ATTR, STR_ATTR_BOOL,
    STR_ATTR_INT, STR_ENRICH, STR_EVENT, STR_GROUP, STR_REDACT, STR_SERVICE, StrKey,
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

/// An attribute pair or an event name of some rule's match: one bit of the `attrs` word.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Cond<'d> {
    Attr(&'d str, &'d AttrValue),
    Event(&'d str),
}

/// The `STRINGS` key of an attribute pair (key and value within their limits): a string's
/// bytes, an int's 8 bytes little-endian or a bool's one byte, each under its own kind, so
/// that values of different types never meet.
pub(super) fn attribute_key(name: &str, value: &AttrValue) -> StrKey {
    let mut key = StrKey::ZERO;
    let (kind, bytes) = match value {
        AttrValue::Str(s) => (STR_ATTR, s.as_bytes().to_vec()),
        AttrValue::Int(i) => (STR_ATTR_INT, i.to_le_bytes().to_vec()),
        AttrValue::Bool(b) => (STR_ATTR_BOOL, vec![*b as u8]),
    };
    key.kind = kind;
    key.klen = name.len() as u8;
    key.vlen = bytes.len() as u32;
    let (k, v) = key.bytes.split_at_mut(name.len());
    k.copy_from_slice(name.as_bytes());
    v[..bytes.len()].copy_from_slice(&bytes);
    key
}

/// The `STRINGS` key of a `group_by` attribute key (its bits: the key's index).
pub(super) fn group_key(name: &str) -> StrKey {
    let mut key = remove_key(name);
    key.kind = STR_GROUP;
    key
}

/// The `STRINGS` key of a resource attribute name `[enrich]` adds.
pub(super) fn enrich_key(name: &[u8]) -> StrKey {
    let mut key = StrKey::ZERO;
    key.kind = STR_ENRICH;
    key.klen = name.len() as u8;
    key.bytes[..name.len()].copy_from_slice(name);
    key
}

/// The `STRINGS` key of an event name (within its limit).
pub(super) fn event_key(name: &str) -> StrKey {
    let mut key = StrKey::ZERO;
    key.kind = STR_EVENT;
    key.vlen = name.len() as u32;
    key.bytes[..name.len()].copy_from_slice(name.as_bytes());
    key
}
