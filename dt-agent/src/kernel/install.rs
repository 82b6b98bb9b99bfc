//! Installing a rule set: written into the inactive slot of every double-buffered map (marked
//! stale first, then left alone for a grace period), then made active by one write to
//! `CONTROL.active`; and the `NAMES` table of every rule counted for.

use std::{collections::BTreeMap, thread, time::Duration};

use aya::maps::{Array, HashMap, PerCpuArray, PerCpuValues};
use dt_ebpf_common::{
    AcTable, Control, ENRICH_CONTAINER, ENRICH_POD, GV_MISSING, GV_OTHER, GroupKey, HashEntry,
    HashKey, MAX_GROUP_ENTRIES, MAX_NAME_LEN, NameEntry, NameKey, RuleCounters, RuleSet, StrKey,
    TriggerState, hashed_kind,
};

use anyhow::Context as _;

use super::objects::NewRings;
use super::{Agent, KnownRule, map};
use crate::hooks::uprobe::ReadyEntry;
use crate::rules::{Compiled, Hook, RuleErrors, SlotTable};

/// How long a rewritten slot is left alone after it was marked stale, so that any walk that
/// read the old contents has finished. A walk is one program run: microseconds to a millisecond.
const SLOT_GRACE: Duration = Duration::from_millis(20);

impl Agent {
    /// Makes `compiled` the active rule set, as a new generation, with `slots` its counter
    /// slots (from [`Agent::compile_defs`]): it is written into the inactive slot, then one
    /// write to `CONTROL.active` flips to it.
    ///
    /// Whatever can fail is done first, where the active set does not see it: the inactive
    /// slot, the `__other__`/`__missing__` entries of grouped rules, new recorder rings (made,
    /// not yet in place), the uprobe functions to attach. On an error there, what it added is
    /// taken out again, and the active set, its recorders and states, the counters and the
    /// slot table are as they were. Two lasting changes: removed rules whose slots it took back
    /// and cleared stay forgotten, and removed rules' groups dropped to make room stay dropped
    /// (both are history the new set needed the room of).
    pub(super) fn install(
        &mut self,
        compiled: &Compiled,
        mut slots: SlotTable,
    ) -> anyhow::Result<()> {
        // uprobe hook: attach the probes the new set uses first; on failure nothing changed.
        let probes_before = self.probes.attached_ids();
        let probes_ready = match self.probes.prepare(&mut self.ebpf, &compiled.uprobe) {
            Ok(r) => r,
            Err(diags) => {
                self.probes.keep_only(&probes_before);
                return Err(RuleErrors(diags).into());
            }
        };
        let reclaimed = std::mem::take(&mut slots.reclaimed);
        let (mut groups_added, mut cleared) = (Vec::new(), Vec::new());
        let staged = self.stage(
            compiled,
            &reclaimed,
            &probes_ready,
            &mut groups_added,
            &mut cleared,
        );
        // Removed rules whose slots were taken back and cleared are forgotten either way.
        for (name, _) in &cleared {
            self.forget(name);
        }
        let rings = match staged {
            Ok(rings) => rings,
            Err(e) => {
                self.remove_groups(&groups_added);
                self.probes.keep_only(&probes_before);
                // Slots taken back but not cleared stay their removed rules'.
                for (name, _) in &cleared {
                    self.slots.release(name);
                }
                return Err(e);
            }
        };

        // Nothing fails from here on but a map update the kernel refuses for no reason of the
        // rule set's (an out-of-range index, which cannot happen).
        let slot = 1 - self.active_slot;
        let generation = self.generation + 1;
        // Recorders (their rings) and states the new set has, before it can use them.
        let old_objects = self.active_objects.clone();
        if let Err(e) = self.objects.prepare(compiled, &old_objects, rings) {
            // (Unlikely: map updates at valid indices. What prepare put in place before it
            // failed stays; the active set goes on with it.)
            self.remove_groups(&groups_added);
            self.probes.keep_only(&probes_before);
            for (name, _) in &cleared {
                self.slots.release(name);
            }
            return Err(e);
        }
        self.slots = slots;
        let mut rs = compiled.ruleset;
        rs.generation = generation;
        let mut rulesets: Array<_, RuleSet> = Array::try_from(map(&mut self.ebpf, "RULESETS")?)?;
        rulesets.set(slot, rs, 0)?;
        {
            let _guard = super::control_lock();
            let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
            let mut c = control.get(&0, 0)?;
            c.active = Control::pack(generation, slot);
            control.set(0, c, 0)?;
        }
        // uprobe hook: detach what the new set no longer uses.
        self.probes.finish(&probes_ready);
        // Recorders and states the set no longer has go.
        if let Err(e) = self.objects.finish(compiled, &old_objects) {
            log::warn!("freeing removed recorders and states: {e:#}");
        }
        self.active_objects = self.slots.objects.clone();
        *self
            .recorder_names
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = compiled
            .recorders
            .iter()
            .map(|r| (r.slot, r.name.clone()))
            .collect();
        self.ring_bytes = compiled
            .recorders
            .iter()
            .map(|r| super::objects::ring_memory(r.size))
            .sum();

        if let Some(t) = &self.cgroups {
            let wants = compiled.ruleset.enrich & (ENRICH_CONTAINER | ENRICH_POD) != 0;
            t.wanted.store(wants, std::sync::atomic::Ordering::Relaxed);
        }
        self.other_used = true;
        self.active_slot = slot;
        let was = self.generation;
        self.generation = generation;
        for r in self.known.values_mut() {
            if r.active {
                // Active through the generation that ends now.
                r.last_active = was;
            }
            r.active = false;
        }
        self.active = compiled.rules.clone();
        // A rule on several hooks (one counter) has them all, in rule set order.
        let mut hooks: BTreeMap<u16, Vec<Hook>> = BTreeMap::new();
        for r in &compiled.rules {
            hooks.entry(r.slot).or_default().push(r.hook.clone());
        }
        for r in &compiled.rules {
            self.known.insert(
                r.slot,
                KnownRule {
                    name: r.name.clone(),
                    action: r.action,
                    hooks: hooks.get(&r.slot).cloned().unwrap_or_default(),
                    active: true,
                    last_active: generation,
                },
            );
        }
        // The set is active: a name table not written is said, not a refusal.
        if let Err(e) = self.write_names() {
            log::warn!("writing the pinned name table: {e:#}");
        }
        Ok(())
    }

    /// Everything of installing `compiled` that the active set does not see, and everything
    /// that can fail: the inactive slot's tables (marked stale first), the counters of the
    /// slots taken back, room and entries in `GROUPS` (those it adds listed in `groups_added`),
    /// the new recorder rings (made, returned), the uprobe tables of the inactive slot.
    fn stage(
        &mut self,
        compiled: &Compiled,
        reclaimed: &[(String, u16)],
        probes_ready: &[ReadyEntry],
        groups_added: &mut Vec<GroupKey>,
        cleared: &mut Vec<(String, u16)>,
    ) -> anyhow::Result<NewRings> {
        let slot = 1 - self.active_slot;
        let generation = self.generation + 1;
        let mut rulesets: Array<_, RuleSet> = Array::try_from(map(&mut self.ebpf, "RULESETS")?)?;
        // Mark the slot stale first, by its generation alone: a request that captured it under
        // its old generation passes through instead of being judged by a half-written set, and a
        // walk still reading the old rules finds them intact (it checks the generation again
        // when it is done).
        let mut stale = rulesets.get(&slot, 0)?;
        stale.generation = 0;
        rulesets.set(slot, stale, 0)?;
        if self.other_used {
            thread::sleep(SLOT_GRACE);
        }
        // Slots taken back from removed rules start again from nothing: no walk of a set that
        // still names them can commit any more (the only such set is the one just marked
        // stale).
        for (name, s) in reclaimed {
            // Listed first: a slot cleared in part is forgotten too, not left to a name whose
            // counts it no longer holds.
            cleared.push((name.clone(), *s));
            self.clear_slot(*s)?;
        }
        if !reclaimed.is_empty() {
            self.clear_groups_of(reclaimed)?;
            let taken: Vec<String> = reclaimed
                .iter()
                .map(|(name, s)| format!("\"{name}\" (slot {s})"))
                .collect();
            log::info!(
                "counter slots of removed rules taken back for new rules (their counts are gone): \
                 {}",
                taken.join(", ")
            );
        }
        {
            let mut strings: HashMap<_, StrKey, u64> =
                HashMap::try_from(map(&mut self.ebpf, "STRINGS")?)?;
            let stale: Vec<StrKey> = strings
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.slot as u32 == slot)
                .collect();
            for k in stale {
                strings.remove(&k)?;
            }
            for (key, bits) in &compiled.strings {
                let mut key = *key;
                key.slot = slot as u8;
                strings.insert(key, bits, 0)?;
            }
        }
        {
            let mut hashes: HashMap<_, HashKey, HashEntry> =
                HashMap::try_from(map(&mut self.ebpf, "ATTR_HASHES")?)?;
            let stale: Vec<HashKey> = hashes
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.slot as u32 == slot)
                .collect();
            for k in stale {
                hashes.remove(&k)?;
            }
            for (key, bits) in &compiled.strings {
                if !hashed_kind(key.kind) {
                    continue;
                }
                let mut key = *key;
                key.slot = slot as u8;
                let (hk, he) = HashEntry::of(&key, *bits);
                hashes.insert(hk, he, 0)?;
            }
        }
        {
            let mut flat: Array<_, AcTable> = Array::try_from(map(&mut self.ebpf, "AC_FLAT")?)?;
            flat.set(slot, compiled.ac_table(), 0)?;
        }
        let rings = self.objects.new_rings(compiled, &self.active_objects)?;
        // uprobe hook: the slot's uprobe tables, under the generation it will have.
        self.probes.write_slot(
            &mut self.ebpf,
            slot,
            generation,
            &compiled.uprobe,
            probes_ready,
        )?;
        // Last, as nothing can be undone of it: room in GROUPS (removed rules' groups dropped),
        // then the entries the new set's grouped rules count into.
        self.make_group_room(compiled)?;
        // Grouped rules count under `__other__` and `__missing__`: their entries exist before
        // the set can count into them, so they are never lost to a full map.
        {
            let mut groups: HashMap<_, GroupKey, u64> =
                HashMap::try_from(map(&mut self.ebpf, "GROUPS")?)?;
            for r in compiled.rules.iter().filter(|r| r.group_by.is_some()) {
                for kind in [GV_OTHER, GV_MISSING] {
                    let k = GroupKey::special(r.slot as u32, kind);
                    if groups.get(&k, 0).is_err() {
                        groups.insert(k, 0, 0).with_context(|| {
                            format!(
                                "rule \"{}\": adding its group entries to the kernel's group \
                                 map ({MAX_GROUP_ENTRIES} entries)",
                                r.name
                            )
                        })?;
                        groups_added.push(k);
                    }
                }
            }
        }
        Ok(rings)
    }

    /// Room in `GROUPS` for the grouped rules of `compiled`: each may hold up to its
    /// `max_groups` values and its two special entries. Entries of rules in neither the active
    /// set nor `compiled` (removed rules' final groups) make room, the rule active longest ago
    /// first, as far as needed; their `matched` counts stay. Short of room even then, new values
    /// count under `__other__` as on any full map.
    fn make_group_room(&mut self, compiled: &Compiled) -> anyhow::Result<()> {
        let wanted: BTreeMap<u16, u64> = compiled
            .rules
            .iter()
            .filter_map(|r| {
                r.group_by
                    .as_ref()
                    .map(|(_, max)| (r.slot, u64::from(*max) + 2))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut groups: HashMap<_, GroupKey, u64> =
            HashMap::try_from(map(&mut self.ebpf, "GROUPS")?)?;
        let mut by_slot: BTreeMap<u16, Vec<GroupKey>> = BTreeMap::new();
        for k in groups.keys().filter_map(Result::ok) {
            by_slot.entry(k.slot as u16).or_default().push(k);
        }
        let others: u64 = by_slot
            .iter()
            .filter(|(s, _)| !wanted.contains_key(s))
            .map(|(_, keys)| keys.len() as u64)
            .sum();
        let need: u64 = wanted.values().sum();
        let mut over = (others + need).saturating_sub(u64::from(MAX_GROUP_ENTRIES));
        if over == 0 {
            return Ok(());
        }
        let mut freed = Vec::new();
        // Rules of the new set keep their groups, grouped or not now (their history).
        let keep: std::collections::BTreeSet<u16> = compiled.rules.iter().map(|r| r.slot).collect();
        for s in super::retired_slots(&self.known) {
            if over == 0 {
                break;
            }
            if keep.contains(&s) {
                continue;
            }
            let Some(keys) = by_slot.remove(&s) else {
                continue;
            };
            for k in &keys {
                groups.remove(k)?;
            }
            let mut count: Array<_, u64> = Array::try_from(map(&mut self.ebpf, "GROUP_COUNT")?)?;
            count.set(u32::from(s), 0, 0)?;
            groups = HashMap::try_from(map(&mut self.ebpf, "GROUPS")?)?;
            over = over.saturating_sub(keys.len() as u64);
            if let Some(r) = self.known.get(&s) {
                freed.push(format!("\"{}\" ({})", r.name, keys.len()));
            }
        }
        if !freed.is_empty() {
            log::info!(
                "the kernel's group map ({MAX_GROUP_ENTRIES} entries) made room for the new rule \
                 set's grouped rules: the groups of removed rules were dropped (their counts stay): \
                 {}",
                freed.join(", ")
            );
        }
        Ok(())
    }

    /// Takes out the `GROUPS` entries a refused install added.
    fn remove_groups(&mut self, added: &[GroupKey]) {
        if let Ok(m) = map(&mut self.ebpf, "GROUPS")
            && let Ok(mut groups) = HashMap::<_, GroupKey, u64>::try_from(m)
        {
            for k in added {
                let _ = groups.remove(k);
            }
        }
    }

    /// Forgets the removed rule `name` whose counter slot was taken back: its name entry, and
    /// what the agent knew of it.
    fn forget(&mut self, name: &str) {
        if let Ok(m) = map(&mut self.ebpf, "NAMES")
            && let Ok(mut names) = HashMap::<_, NameKey, NameEntry>::try_from(m)
        {
            let _ = names.remove(&name_key(name));
        }
        self.known.retain(|_, r| r.name != name);
    }

    /// Zeroes what the kernel keeps for counter slot `slot`, taken back from a removed rule:
    /// counters, sample and rate state, trigger state (its groups: [`Self::clear_groups_of`]).
    fn clear_slot(&mut self, slot: u16) -> anyhow::Result<()> {
        let i = slot as u32;
        {
            let mut counters: PerCpuArray<_, RuleCounters> =
                PerCpuArray::try_from(map(&mut self.ebpf, "RULE_COUNTERS")?)?;
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            counters.set(
                i,
                PerCpuValues::try_from(vec![RuleCounters::default(); cpus])?,
                0,
            )?;
        }
        for m in ["GROUP_COUNT", "SAMPLES", "RATES"] {
            let mut a: Array<_, u64> = Array::try_from(map(&mut self.ebpf, m)?)?;
            a.set(i, 0, 0)?;
        }
        {
            let mut t: Array<_, TriggerState> = Array::try_from(map(&mut self.ebpf, "TRIGGERS")?)?;
            t.set(i, TriggerState::default(), 0)?;
        }
        Ok(())
    }

    /// Removes the groups of the counter slots taken back (one walk of `GROUPS` for all).
    fn clear_groups_of(&mut self, reclaimed: &[(String, u16)]) -> anyhow::Result<()> {
        let mut groups: HashMap<_, GroupKey, u64> =
            HashMap::try_from(map(&mut self.ebpf, "GROUPS")?)?;
        let stale: Vec<GroupKey> = groups
            .keys()
            .filter_map(Result::ok)
            .filter(|k| reclaimed.iter().any(|(_, s)| u32::from(*s) == k.slot))
            .collect();
        for k in stale {
            groups.remove(&k)?;
        }
        Ok(())
    }

    /// Writes the name→slot table (and which rules are active) to the `NAMES` map.
    fn write_names(&mut self) -> anyhow::Result<()> {
        let mut names: HashMap<_, NameKey, NameEntry> =
            HashMap::try_from(map(&mut self.ebpf, "NAMES")?)?;
        for (slot, r) in &self.known {
            names.insert(
                name_key(&r.name),
                NameEntry {
                    slot: *slot as u32,
                    action: r.action.code(),
                    active: r.active as u8,
                    _pad: 0,
                },
                0,
            )?;
        }
        Ok(())
    }
}

fn name_key(name: &str) -> NameKey {
    let mut key = [0u8; MAX_NAME_LEN];
    let n = name.len().min(MAX_NAME_LEN);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    key
}
