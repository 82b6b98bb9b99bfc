//! Counter slots: which index of the per-CPU `RULE_COUNTERS` array belongs to which rule name.

use std::collections::{BTreeMap, BTreeSet};

use dt_ebpf_common::MAX_SLOTS;
use serde::{Deserialize, Serialize};

/// Maps rule names to counter slots (`< MAX_SLOTS`).
///
/// Assignments are stable: a name keeps its slot while the rule is out of the rule set, so a
/// removed rule keeps its final counts and a re-added one continues them. New names take the
/// lowest free slot; when none is free, the slot of a removed rule ([`SlotTable::retired`],
/// the first of them: the agent lists them longest inactive first) is taken back, its name
/// forgotten ([`SlotTable::reclaimed`] says
/// which, for the agent to clear its counters). The table serializes as a map from name to
/// slot, so it can be persisted next to pinned maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u16>", into = "BTreeMap<String, u16>")]
pub struct SlotTable {
    by_name: BTreeMap<String, u16>,
    taken: BTreeSet<u16>,
    /// Slots of the active set's recorders and states, by name (not persisted here: the
    /// agent keeps them in the pinned `OBJECTS` map).
    pub objects: ObjectSlots,
    /// Names of removed rules whose slots may be taken back when no slot is free, the first
    /// taken first (the agent's inactive rules, the one active longest ago first, so that rules
    /// that come and go keep their counts; never a name of the set being compiled).
    pub retired: Vec<String>,
    /// Slots taken back by [`SlotTable::assign`] since the last install, with the names they had.
    pub reclaimed: Vec<(String, u16)>,
}

/// Slots of recorders and of states. Unlike rule counter slots, these are few: a name keeps
/// its slot while its rule sets keep it, and a slot is free again once no active set names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectSlots {
    pub recorders: BTreeMap<String, u8>,
    pub states: BTreeMap<String, u8>,
}

impl ObjectSlots {
    /// Slots for `names` (the new set's), keeping the slot of each name the active set has, and
    /// giving new names the lowest slot that neither set uses. `None` when `max` run out.
    pub fn assign(
        old: &BTreeMap<String, u8>,
        names: &[&str],
        max: u32,
    ) -> Option<BTreeMap<String, u8>> {
        let mut new: BTreeMap<String, u8> = BTreeMap::new();
        for &n in names {
            if let Some(&s) = old.get(n) {
                new.insert(n.to_string(), s);
            }
        }
        for &n in names {
            if new.contains_key(n) {
                continue;
            }
            let used: BTreeSet<u8> = old.values().chain(new.values()).copied().collect();
            let slot = (0..max as u8).find(|s| !used.contains(s))?;
            new.insert(n.to_string(), slot);
        }
        Some(new)
    }
}

impl SlotTable {
    /// An empty table.
    pub fn new() -> SlotTable {
        SlotTable::default()
    }

    /// The slot of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// Every `(name, slot)`, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u16)> {
        self.by_name
            .iter()
            .map(|(name, &slot)| (name.as_str(), slot))
    }

    /// Number of names with a slot.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no name has a slot.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Forgets `name` and frees its slot (a removed rule whose slot was taken back, see
    /// [`SlotTable::reclaimed`], when the rule set that took it was not installed).
    pub fn release(&mut self, name: &str) {
        if let Some(slot) = self.by_name.remove(name) {
            self.taken.remove(&slot);
        }
        self.retired.retain(|n| n != name);
    }

    /// The slot of `name`, assigning the lowest free one first if needed. `None` when every slot
    /// is taken.
    pub fn assign(&mut self, name: &str) -> Option<u16> {
        if let Some(slot) = self.get(name) {
            return Some(slot);
        }
        let free = (0..MAX_SLOTS)
            .filter_map(|s| u16::try_from(s).ok())
            .find(|s| !self.taken.contains(s));
        let slot = match free {
            Some(s) => s,
            None => {
                let i = self
                    .retired
                    .iter()
                    .position(|n| self.by_name.contains_key(n))?;
                let old = self.retired.remove(i);
                let slot = self.by_name.remove(&old)?;
                self.reclaimed.push((old, slot));
                slot
            }
        };
        self.by_name.insert(name.to_owned(), slot);
        self.taken.insert(slot);
        Some(slot)
    }
}

impl TryFrom<BTreeMap<String, u16>> for SlotTable {
    type Error = String;

    fn try_from(by_name: BTreeMap<String, u16>) -> Result<SlotTable, String> {
        let mut taken = BTreeSet::new();
        for (name, &slot) in &by_name {
            if u32::from(slot) >= MAX_SLOTS {
                return Err(format!(
                    "slot {slot} of rule \"{name}\" is out of range (at most {MAX_SLOTS} slots)"
                ));
            }
            if !taken.insert(slot) {
                return Err(format!("slot {slot} is given to more than one rule"));
            }
        }
        Ok(SlotTable {
            by_name,
            taken,
            ..SlotTable::default()
        })
    }
}

impl From<SlotTable> for BTreeMap<String, u16> {
    fn from(table: SlotTable) -> BTreeMap<String, u16> {
        table.by_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_take_the_lowest_free_slot() {
        let mut t = SlotTable::new();
        assert_eq!(t.assign("a"), Some(0));
        assert_eq!(t.assign("b"), Some(1));
        assert_eq!(t.assign("a"), Some(0));
        assert_eq!(t.assign("c"), Some(2));
        assert_eq!(t.get("b"), Some(1));
        assert_eq!(t.get("z"), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn lowest_free_slot_fills_holes() {
        let table: BTreeMap<String, u16> = [("a".to_string(), 0), ("c".to_string(), 2)].into();
        let mut t = SlotTable::try_from(table).unwrap();
        assert_eq!(t.assign("b"), Some(1));
        assert_eq!(t.assign("d"), Some(3));
    }

    #[test]
    fn exhausted_table_assigns_nothing_new() {
        let mut t = SlotTable::new();
        for i in 0..MAX_SLOTS {
            assert_eq!(t.assign(&format!("r{i}")).map(u32::from), Some(i));
        }
        assert_eq!(t.assign("one-too-many"), None);
        assert_eq!(t.assign("r7"), Some(7));
    }

    #[test]
    fn a_full_table_takes_back_the_slots_of_removed_rules_in_their_order() {
        let mut t = SlotTable::new();
        for i in 0..MAX_SLOTS {
            t.assign(&format!("r{i}"));
        }
        // The order the agent gives: the rule inactive longest first, whatever its slot.
        t.retired = ["gone", "r9", "r5"].map(String::from).into();
        assert_eq!(t.assign("new-a"), Some(9));
        assert_eq!(t.assign("new-b"), Some(5));
        assert_eq!(t.assign("new-c"), None, "no removed rule left");
        assert_eq!(t.get("r5"), None);
        assert_eq!(t.reclaimed, [("r9".to_string(), 9), ("r5".to_string(), 5)]);
        assert_eq!(t.len(), MAX_SLOTS as usize);
    }

    #[test]
    fn round_trips_through_json() {
        let mut t = SlotTable::new();
        t.assign("x");
        t.assign("y");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"x":0,"y":1}"#);
        let back: SlotTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.iter().collect::<Vec<_>>(), vec![("x", 0), ("y", 1)]);
    }

    #[test]
    fn rejects_bad_persisted_tables() {
        let dup = serde_json::from_str::<SlotTable>(r#"{"x":3,"y":3}"#);
        assert!(dup.unwrap_err().to_string().contains("more than one rule"));
        let big = serde_json::from_str::<SlotTable>(r#"{"x":5000}"#);
        assert!(big.unwrap_err().to_string().contains("out of range"));
    }
}
