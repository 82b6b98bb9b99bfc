//! Pinned state: where it lives, adopting it, reading it with no agent running (`stats`,
//! `disable`/`enable`), refusing another layout's, and removing it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use dt_ebpf_common::{
    Control, LAYOUT_VERSION, NameEntry, NameKey, RuleCounters, RuleSet, Totals,
    uprobe::ProbeRuleSet,
};

use super::{
    KnownRule, all_maps,
    counters::{build_stats, set_enabled_in},
};
use crate::{
    hooks,
    rules::{ActionKind, Hook, SlotTable},
    stats::Stats,
};

/// The pin directory for this layout under `root`.
pub fn pin_dir(root: &Path) -> PathBuf {
    root.join(format!("v{LAYOUT_VERSION}"))
}

/// `stats` from the pinned maps, with no agent running.
pub fn pinned_stats(root: &Path) -> anyhow::Result<Stats> {
    pinned_stats_as(root, false)
}

/// `stats` from the pinned maps of an agent that runs but does not answer (hung, or starting).
pub fn pinned_stats_of_running(root: &Path) -> anyhow::Result<Stats> {
    pinned_stats_as(root, true)
}

fn pinned_stats_as(root: &Path, agent_runs: bool) -> anyhow::Result<Stats> {
    let dir = pin_dir(root);
    check_pinned_layout(&dir)?;
    let control: Array<_, Control> = Array::try_from(pinned_map(&dir, "CONTROL", Map::Array)?)?;
    let counters: PerCpuArray<_, RuleCounters> =
        PerCpuArray::try_from(pinned_map(&dir, "RULE_COUNTERS", Map::PerCpuArray)?)?;
    let totals: PerCpuArray<_, Totals> =
        PerCpuArray::try_from(pinned_map(&dir, "TOTALS", Map::PerCpuArray)?)?;
    let (_, known) = read_names(&dir)?;
    let mut stats = build_stats(&control, &counters, &totals, &known)?;
    if !stats.enabled {
        // With no agent running, a cord pulled by a stopping agent was left by an uninstall cut
        // short; with one (hung), it may be stopping now.
        let off_why = control.get(&0, 0)?.off_why;
        let (cause, why) = if agent_runs {
            (
                super::counters::cause_recorded(off_why),
                super::counters::reason_recorded(off_why),
            )
        } else {
            (
                super::counters::cause_adopted(off_why),
                super::counters::reason_adopted(off_why),
            )
        };
        stats.disabled_reason = Some(why);
        stats.disabled_cause = Some(cause.to_string());
    }
    if let Ok(m) = pinned_map(&dir, "HELD", Map::HashMap)
        && let Ok(held) = aya::maps::HashMap::<_, u64, dt_ebpf_common::Held>::try_from(m)
    {
        stats.totals.in_flight_longest_ms = super::counters::longest_held_ms(&held);
    }
    let groups: aya::maps::HashMap<_, dt_ebpf_common::GroupKey, u64> =
        aya::maps::HashMap::try_from(pinned_map(&dir, "GROUPS", Map::HashMap)?)?;
    super::counters::add_groups(&mut stats, &groups, &known);
    stats.uprobes = hooks::uprobe::pinned_stats(&dir);
    let objects = super::Objects::from_pins(&dir)?;
    let names = objects.read_names();
    super::counters::add_objects(&mut stats, &objects, &names, &known);
    Ok(stats)
}

/// The rip cord on the pinned state, with no agent running.
pub fn pinned_set_enabled(root: &Path, enabled: bool) -> anyhow::Result<()> {
    let dir = pin_dir(root);
    check_pinned_layout(&dir)?;
    let mut control: Array<_, Control> = Array::try_from(pinned_map(&dir, "CONTROL", Map::Array)?)?;
    set_enabled_in(&mut control, enabled, dt_ebpf_common::OFF_BY_HAND)
}

/// `dt-agent state NAME on|off` on the pinned state, with no agent running.
pub fn pinned_set_state(
    root: &Path,
    name: &str,
    on: bool,
    duration: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let dir = pin_dir(root);
    check_pinned_layout(&dir)?;
    let mut objects = super::Objects::from_pins(&dir)?;
    let names = objects.read_names();
    super::set_state_named(&mut objects, &names.states, name, on, duration)
}

/// Whether pinned state of this layout exists under `root`.
pub fn has_pins(root: &Path) -> bool {
    pin_dir(root).join("CONTROL").exists()
}

fn pinned_map(dir: &Path, name: &str, kind: fn(MapData) -> Map) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Ok(kind(data))
}

/// Refuses to start beside the pinned state of another map layout (an older or newer dt-agent
/// left it): its programs are still attached, and two dt programs on the same connections would
/// judge every request twice.
pub(super) fn refuse_other_layouts(root: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let other = name
            .strip_prefix('v')
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v != LAYOUT_VERSION);
        if other && entry.path().join("CONTROL").exists() {
            bail!(
                "{} holds the pinned state of dt's map layout {name}, still attached, and this \
                 agent uses layout v{LAYOUT_VERSION}: uninstall it first with the dt-agent that \
                 made it (`dt-agent uninstall`), or remove the directory (`rm -r {}`: its \
                 programs detach, and traffic then flows unfiltered until this agent starts)",
                entry.path().display(),
                entry.path().display()
            );
        }
    }
    Ok(())
}

pub(super) fn check_pinned_layout(dir: &Path) -> anyhow::Result<()> {
    let control: Array<_, Control> = Array::try_from(pinned_map(dir, "CONTROL", Map::Array)?)?;
    let c = control.get(&0, 0)?;
    if c.layout != LAYOUT_VERSION {
        bail!(
            "the pinned state in {} has map layout {}, this agent uses {}; remove it with \
             `dt-agent uninstall` (or delete the directory) first",
            dir.display(),
            c.layout,
            LAYOUT_VERSION
        );
    }
    Ok(())
}

/// The name→slot table and the rules it names, from the pinned `NAMES` map; each rule's hooks
/// from the rule sets that hold it ([`pinned_hooks`]).
pub(super) fn read_names(dir: &Path) -> anyhow::Result<(SlotTable, BTreeMap<u16, KnownRule>)> {
    let names: HashMap<_, NameKey, NameEntry> =
        HashMap::try_from(pinned_map(dir, "NAMES", Map::HashMap)?)?;
    let mut hooks = pinned_hooks(dir)?;
    let mut table = BTreeMap::new();
    let mut known = BTreeMap::new();
    for entry in names.iter() {
        let (key, e) = entry?;
        let len = key.iter().position(|b| *b == 0).unwrap_or(key.len());
        let name = String::from_utf8_lossy(&key[..len]).into_owned();
        let action = ActionKind::from_code(e.action).ok_or_else(|| {
            anyhow!(
                "the pinned name table in {} is damaged: rule {name:?} has action code {}",
                dir.display(),
                e.action
            )
        })?;
        let slot = e.slot as u16;
        table.insert(name.clone(), slot);
        known.insert(
            slot,
            KnownRule {
                name,
                action,
                // In neither rule set (removed two or more changes ago): an OTLP rule, as the
                // pinned state cannot say otherwise.
                hooks: hooks.remove(&slot).unwrap_or_else(|| vec![Hook::Otlp]),
                active: e.active != 0,
                last_active: 0,
            },
        );
    }
    let slots = SlotTable::try_from(table)
        .map_err(|e| anyhow!("the pinned name table in {} is damaged: {e}", dir.display()))?;
    Ok((slots, known))
}

/// The hooks of each counter slot, by the rule set map that holds its rules: one `otlp` hook for
/// a rule of the `RULESETS` entry, one uprobe hook for each rule of the `PROBE_RULES` entry (the
/// pins keep no probe names: [`Hook::unnamed_uprobe`]). The active slot is read first, then the
/// other one unless it is stale (a rule removed by the last change is only there).
fn pinned_hooks(dir: &Path) -> anyhow::Result<BTreeMap<u16, Vec<Hook>>> {
    let control: Array<_, Control> = Array::try_from(pinned_map(dir, "CONTROL", Map::Array)?)?;
    let rulesets: Array<_, RuleSet> = Array::try_from(pinned_map(dir, "RULESETS", Map::Array)?)?;
    let probe_rules: Array<_, ProbeRuleSet> =
        Array::try_from(pinned_map(dir, "PROBE_RULES", Map::Array)?)?;
    let active = control.get(&0, 0)?.active_slot();
    let mut out: BTreeMap<u16, Vec<Hook>> = BTreeMap::new();
    for slot in [active, 1 - active] {
        let rs = rulesets.get(&slot, 0)?;
        let prs = probe_rules.get(&slot, 0)?;
        if rs.generation == 0 {
            continue;
        }
        let mut here: BTreeMap<u16, Vec<Hook>> = BTreeMap::new();
        let n = (rs.n_rules as usize).min(rs.rules.len());
        for r in &rs.rules[..n] {
            here.entry(r.slot).or_default().push(Hook::Otlp);
        }
        if prs.generation == rs.generation {
            let n = (prs.n_rules as usize).min(prs.rules.len());
            for r in &prs.rules[..n] {
                here.entry(r.slot).or_default().push(Hook::unnamed_uprobe());
            }
        }
        for (slot, hooks) in here {
            out.entry(slot).or_insert(hooks);
        }
    }
    Ok(out)
}

pub(super) fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    for name in all_maps().chain([hooks::otlp::SOCKOPS_LINK]) {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    if let Some(root) = dir.parent() {
        // The root too, when nothing else is in it.
        let _ = std::fs::remove_dir(root);
    }
    Ok(())
}
