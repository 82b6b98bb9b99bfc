//! Reading the kernel's counters back: per-CPU values summed, the `stats` document built, the
//! rip cord switch, and the requests held now (`HELD`).

use std::collections::BTreeMap;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use dt_ebpf_common::{
    Control, GV_BOOL, GV_INT, GV_LEVEL, GV_MISSING, GV_STRING, GroupKey, Held, OFF_BY_CEILING,
    OFF_BY_HAND, OFF_STOPPING, Passthrough, RuleCounters, Totals,
};

use super::{Agent, KnownRule, map, map_ref};
use crate::{
    drain::{self, HeldRequest, Holding},
    rules::{ActionKind, Hook},
    stats::{RuleStats, Stats, TotalStats},
};

/// `disabled_reason` when the rip cord was pulled by hand (or by the pins, with no agent).
const HAND_PULLED: &str =
    "the rip cord is pulled (dt-agent disable): every request passes untouched";
/// `disabled_reason` while the agent drains before it detaches.
const STOPPING: &str = "the agent is stopping (it waits for held requests, then detaches): \
                        every request passes untouched";

/// [`Stats::disabled_cause`] of a rip cord pulled with `off_why` (see [`reason_recorded`]).
pub(super) fn cause_recorded(off_why: u32) -> &'static str {
    match off_why {
        OFF_BY_CEILING => CAUSE_CEILING,
        OFF_STOPPING => CAUSE_STOPPING,
        OFF_BY_HAND => CAUSE_DISABLE,
        _ => "unknown",
    }
}

/// [`Stats::disabled_cause`] of an adopted rip cord (see [`reason_adopted`]).
pub(super) fn cause_adopted(off_why: u32) -> &'static str {
    match off_why {
        OFF_STOPPING => "uninstall_cut_short",
        o => cause_recorded(o),
    }
}

/// The words of [`Stats::disabled_cause`] this agent sets itself.
const CAUSE_CEILING: &str = "ceiling";
const CAUSE_DISABLE: &str = "disable";
const CAUSE_STOPPING: &str = "stopping";

/// What `stats` says of a rip cord pulled with `off_why` ([`Control::off_why`]) by an agent
/// before this one (an adopted pinned state), or with no agent running.
pub(super) fn reason_recorded(off_why: u32) -> String {
    match off_why {
        OFF_BY_CEILING => "ceiling: the cost ceiling was exceeded (the figures are in the log of \
                           the agent that measured them): every request passes untouched until \
                           dt-agent enable"
            .to_string(),
        OFF_STOPPING => STOPPING.to_string(),
        OFF_BY_HAND => HAND_PULLED.to_string(),
        _ => "the rip cord is pulled: every request passes untouched".to_string(),
    }
}

/// What an agent that adopts pinned state with the rip cord pulled says of it: as
/// [`reason_recorded`], but a pull by a stopping agent means its uninstall was cut short (a
/// pinned agent stops without pulling it), not that an agent is stopping now.
pub(super) fn reason_adopted(off_why: u32) -> String {
    match off_why {
        OFF_STOPPING => "an uninstall was cut short before it detached (the agent stopping it was \
                         killed): every request passes untouched until dt-agent enable, or \
                         uninstall again"
            .to_string(),
        o => reason_recorded(o),
    }
}

impl Agent {
    /// Reads every counter back, summed over all CPUs.
    pub fn stats(&self) -> anyhow::Result<Stats> {
        let mut stats = self.summary()?;
        let held: HashMap<_, u64, Held> = HashMap::try_from(map_ref(&self.ebpf, "HELD")?)?;
        stats.totals.in_flight_longest_ms = longest_held_ms(&held);
        let groups: HashMap<_, GroupKey, u64> = HashMap::try_from(map_ref(&self.ebpf, "GROUPS")?)?;
        add_groups(&mut stats, &groups, &self.known);
        stats.uprobes = self.probes.stats(&self.ebpf);
        add_objects(&mut stats, &self.objects, &self.active_objects, &self.known);
        Ok(stats)
    }

    /// What `stats` says without the parts that walk a map entry by entry (the rules' groups,
    /// the held requests, the uprobe hook, recorders and states): the generation, the rip cord
    /// and why, the totals and the rules' counters. For the agent's own frequent checks
    /// (health, the ceiling, the log's advice), which run under the service's lock.
    pub fn summary(&self) -> anyhow::Result<Stats> {
        let control: Array<_, Control> = Array::try_from(map_ref(&self.ebpf, "CONTROL")?)?;
        let counters: PerCpuArray<_, RuleCounters> =
            PerCpuArray::try_from(map_ref(&self.ebpf, "RULE_COUNTERS")?)?;
        let totals: PerCpuArray<_, Totals> = PerCpuArray::try_from(map_ref(&self.ebpf, "TOTALS")?)?;
        let mut stats = build_stats(&control, &counters, &totals, &self.known)?;
        if !stats.enabled {
            // Who pulled the cord is the kernel's to say (a hung agent's client pulls it on the
            // maps directly); this agent's own words stand while they say the same.
            let off_why = control.get(&0, 0)?.off_why;
            let recorded = cause_recorded(off_why);
            let (cause, why) = match &self.disabled {
                Some((c, w))
                    if *c == recorded
                        || (*c == cause_adopted(off_why) && off_why == OFF_STOPPING) =>
                {
                    (*c, w.clone())
                }
                _ => (recorded, reason_recorded(off_why)),
            };
            stats.disabled_reason = Some(why);
            stats.disabled_cause = Some(cause.to_string());
        }
        stats.cost = self.cost.clone();
        Ok(stats)
    }

    /// Turns rule evaluation on or off (the rip cord). Off, every request passes untouched.
    /// On clears why it was off.
    pub fn set_enabled(&mut self, enabled: bool) -> anyhow::Result<()> {
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        set_enabled_in(&mut control, enabled, OFF_BY_HAND)?;
        self.disabled = (!enabled).then(|| (CAUSE_DISABLE, HAND_PULLED.to_string()));
        if enabled {
            self.enabled_epoch += 1;
        }
        Ok(())
    }

    /// Pass-through before detaching, said as such.
    pub(super) fn set_stopping(&mut self) -> anyhow::Result<()> {
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        set_enabled_in(&mut control, false, OFF_STOPPING)?;
        self.disabled = Some((CAUSE_STOPPING, STOPPING.to_string()));
        Ok(())
    }

    /// Bumped by every `enable`: a cost measured across one does not count (see
    /// `crate::ceiling`).
    pub fn enabled_epoch(&self) -> u64 {
        self.enabled_epoch
    }

    /// Pulls the rip cord for `reason` (a cost ceiling exceeded): what `stats` says until
    /// `enable`.
    pub fn trip(&mut self, reason: String) -> anyhow::Result<()> {
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        set_enabled_in(&mut control, false, OFF_BY_CEILING)?;
        self.disabled = Some((CAUSE_CEILING, reason));
        Ok(())
    }

    /// Run time of every program of this agent (sk_msg, sock_ops, uprobes) since it was
    /// loaded, in nanoseconds, and their runs: counted by the kernel while BPF run-time
    /// statistics are on (see `crate::ceiling`); then the time the uprobe program waited for
    /// pages (asleep, in that run time: not CPU), read after it.
    pub fn run_time(&self) -> (u64, u64, u64) {
        let mut ns = 0u64;
        let mut runs = 0u64;
        for (_, p) in self.ebpf.programs() {
            if let Ok(info) = p.info() {
                ns = ns.saturating_add(info.run_time().as_nanos() as u64);
                runs = runs.saturating_add(info.run_count());
            }
        }
        // Read second: a run adds its waits just before it ends and its run time just after,
        // so these never fall short of the waits in the run time read above.
        let waited = crate::hooks::uprobe::faults(&self.ebpf).ns;
        (ns, runs, waited)
    }

    /// What the cost ceiling measured last (shown by `stats`).
    pub fn set_cost(&mut self, mut cost: crate::stats::CostStats) {
        cost.map_bytes = self.map_bytes();
        self.cost = Some(cost);
    }

    /// The requests held in the kernel now, and who sent them.
    pub fn holding(&self) -> anyhow::Result<Holding> {
        let totals: PerCpuArray<_, Totals> = PerCpuArray::try_from(map_ref(&self.ebpf, "TOTALS")?)?;
        let t = sum_totals(&totals)?;
        let held: HashMap<_, u64, Held> = HashMap::try_from(map_ref(&self.ebpf, "HELD")?)?;
        let now = drain::monotonic_ns();
        let mut list: Vec<HeldRequest> = held
            .iter()
            .filter_map(Result::ok)
            .map(|(_, h)| {
                let pid = (h.pid_tgid >> 32) as u32;
                HeldRequest {
                    pid,
                    comm: drain::comm(pid),
                    local_port: h.local_port as u16,
                    remote_port: h.remote_port as u16,
                    held_ms: now.saturating_sub(h.since_ns) / 1_000_000,
                    bytes: h.total,
                    head: h.phase == dt_ebpf_common::PHASE_HEAD,
                }
            })
            .collect();
        list.sort_by_key(|h| std::cmp::Reverse(h.held_ms));
        Ok(Holding {
            in_flight: t.corked.saturating_sub(t.uncorked),
            held: list,
        })
    }
}

/// How long the request held longest in `held` (`HELD`) has been held, in milliseconds.
pub(super) fn longest_held_ms<H: std::borrow::Borrow<MapData>>(
    held: &HashMap<H, u64, Held>,
) -> u64 {
    let now = drain::monotonic_ns();
    held.iter()
        .filter_map(Result::ok)
        .map(|(_, h)| now.saturating_sub(h.since_ns) / 1_000_000)
        .max()
        .unwrap_or(0)
}

/// The grouped counters of the rules in `stats` (`GROUPS`), by group value.
pub(super) fn add_groups<G: std::borrow::Borrow<MapData>>(
    stats: &mut Stats,
    groups: &HashMap<G, GroupKey, u64>,
    known: &BTreeMap<u16, KnownRule>,
) {
    let mut by_slot: BTreeMap<u16, BTreeMap<String, u64>> = BTreeMap::new();
    for (k, n) in groups.iter().filter_map(Result::ok) {
        *by_slot
            .entry(k.slot as u16)
            .or_default()
            .entry(group_label(&k))
            .or_default() += n;
    }
    for (slot, groups) in by_slot {
        if let Some(r) = known.get(&slot)
            && let Some(rs) = stats.rules.iter_mut().find(|s| s.name == r.name)
        {
            rs.groups = Some(groups);
        }
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character they do not finish (0 to 3).
fn incomplete_tail(bytes: &[u8]) -> usize {
    for n in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - n];
        if b & 0xc0 == 0x80 {
            // A continuation byte: look further back for the lead byte.
            continue;
        }
        let needs = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if needs > n { n } else { 0 };
    }
    0
}

/// How a group value is shown: a string as is (bytes that are not UTF-8 as U+FFFD, a cut one
/// ending in "…"), an int in decimal, a bool, a severity level's name.
pub fn group_label(k: &GroupKey) -> String {
    let bytes = &k.bytes[..(k.len as usize).min(k.bytes.len())];
    match k.kind {
        GV_STRING => {
            // A cut may fall inside a character: its first bytes are not shown (they are not
            // the sender's invalid bytes).
            let shown = if k.cut != 0 {
                &bytes[..bytes.len() - incomplete_tail(bytes)]
            } else {
                bytes
            };
            let mut s = String::from_utf8_lossy(shown).into_owned();
            if k.cut != 0 {
                s.push('…');
            }
            s
        }
        GV_INT => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k.bytes[..8]);
            i64::from_le_bytes(b).to_string()
        }
        GV_BOOL => (k.bytes[0] != 0).to_string(),
        GV_LEVEL => [
            "UNSPECIFIED",
            "TRACE",
            "DEBUG",
            "INFO",
            "WARN",
            "ERROR",
            "FATAL",
        ]
        .get(k.bytes[0] as usize)
        .unwrap_or(&"UNSPECIFIED")
        .to_string(),
        GV_MISSING => "__missing__".into(),
        _ => "__other__".into(),
    }
}

/// Recorders, states and the firings of trigger rules.
pub(super) fn add_objects(
    stats: &mut Stats,
    objects: &super::Objects,
    names: &crate::rules::ObjectSlots,
    known: &BTreeMap<u16, KnownRule>,
) {
    objects.report(names, stats);
    for (slot, r) in known {
        if r.action == ActionKind::Trigger
            && let Some(rs) = stats.rules.iter_mut().find(|s| s.name == r.name)
        {
            rs.fired = Some(objects.fired(*slot));
        }
    }
}

pub(crate) fn set_enabled_in<M: std::borrow::BorrowMut<MapData>>(
    control: &mut Array<M, Control>,
    enabled: bool,
    off_why: u32,
) -> anyhow::Result<()> {
    let _guard = super::control_lock();
    let mut c = control.get(&0, 0)?;
    c.enabled = enabled as u32;
    c.off_why = if enabled { 0 } else { off_why };
    control.set(0, c, 0)?;
    Ok(())
}

pub(super) fn build_stats<C, R, T>(
    control: &Array<C, Control>,
    counters: &PerCpuArray<R, RuleCounters>,
    totals: &PerCpuArray<T, Totals>,
    known: &BTreeMap<u16, KnownRule>,
) -> anyhow::Result<Stats>
where
    C: std::borrow::Borrow<MapData>,
    R: std::borrow::Borrow<MapData>,
    T: std::borrow::Borrow<MapData>,
{
    let c = control.get(&0, 0)?;
    let mut rules = Vec::new();
    for (slot, r) in known {
        let mut sum = RuleCounters::default();
        for v in counters.get(&(*slot as u32), 0)?.iter() {
            sum.matched += v.matched;
            sum.kept += v.kept;
            sum.dropped += v.dropped;
            sum.dropped_bytes += v.dropped_bytes;
            sum.redacted += v.redacted;
        }
        rules.push(RuleStats {
            name: r.name.clone(),
            action: r.action.name().to_string(),
            hook: Hook::names(&r.hooks),
            active: r.active,
            matched: sum.matched,
            kept: sum.kept,
            dropped: sum.dropped,
            dropped_bytes: sum.dropped_bytes,
            redacted: sum.redacted,
            fired: None,
            groups: None,
        });
    }
    // Active rules first, in slot order (the order names were first seen).
    rules.sort_by_key(|r| !r.active);
    let t = sum_totals(totals)?;
    let passthrough = Passthrough::ALL
        .iter()
        .map(|(why, key)| (key.to_string(), t.passthrough[*why as usize]))
        .collect();
    Ok(Stats {
        generation: c.active_generation(),
        enabled: c.enabled != 0,
        rules_error: None,
        rules,
        totals: TotalStats {
            connections: t.connections,
            requests: t.requests,
            log_requests: t.log_requests,
            records: t.records,
            records_dropped: t.records_dropped,
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            edit_failures: t.edit_failures,
            untracked_bytes: t.untracked_bytes,
            in_flight: t.corked.saturating_sub(t.uncorked),
            in_flight_longest_ms: 0,
            released: t.released,
            walk_steps: t.walk_steps,
            fast_records: t.fast_records,
            passthrough,
        },
        uprobes: Default::default(),
        recorders: Vec::new(),
        states: Vec::new(),
        disabled_reason: None,
        disabled_cause: None,
        cost: None,
    })
}

fn sum_totals<T: std::borrow::Borrow<MapData>>(
    totals: &PerCpuArray<T, Totals>,
) -> anyhow::Result<Totals> {
    let mut t = Totals::default();
    for v in totals.get(&0, 0)?.iter() {
        t.connections += v.connections;
        t.requests += v.requests;
        t.log_requests += v.log_requests;
        t.records += v.records;
        t.records_dropped += v.records_dropped;
        t.bytes_in += v.bytes_in;
        t.bytes_out += v.bytes_out;
        t.edit_failures += v.edit_failures;
        t.untracked_bytes += v.untracked_bytes;
        t.corked += v.corked;
        t.uncorked += v.uncorked;
        t.released += v.released;
        t.walk_steps += v.walk_steps;
        t.fast_records += v.fast_records;
        for (a, b) in t.passthrough.iter_mut().zip(v.passthrough.iter()) {
            *a += b;
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way the rip cord is recorded pulled has its word, one of the metric's label values;
    /// the text says the same cause.
    #[test]
    fn every_recorded_pull_has_a_cause_word() {
        use crate::export::families::DISABLED_REASONS;
        for (off_why, recorded, adopted) in [
            (OFF_BY_CEILING, "ceiling", "ceiling"),
            (OFF_BY_HAND, "disable", "disable"),
            (OFF_STOPPING, "stopping", "uninstall_cut_short"),
            (0, "unknown", "unknown"),
            (99, "unknown", "unknown"),
        ] {
            assert_eq!(cause_recorded(off_why), recorded, "{off_why}");
            assert_eq!(cause_adopted(off_why), adopted, "{off_why}");
            assert!(DISABLED_REASONS.contains(&recorded) && DISABLED_REASONS.contains(&adopted));
        }
        assert!(reason_recorded(OFF_BY_CEILING).starts_with("ceiling: "));
        assert!(reason_adopted(OFF_STOPPING).starts_with("an uninstall was cut short"));
        for w in [CAUSE_CEILING, CAUSE_DISABLE, CAUSE_STOPPING] {
            assert!(DISABLED_REASONS.contains(&w), "{w}");
        }
    }

    #[test]
    fn a_value_cut_inside_a_character_shows_no_replacement_character() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail("日本".as_bytes()), 0);
        let cut = &"日本".as_bytes()[..4];
        assert_eq!(incomplete_tail(cut), 1);
        assert_eq!(incomplete_tail(&"日本".as_bytes()[..5]), 2);
        assert_eq!(incomplete_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        // A sender's own invalid byte at the end stays shown (as U+FFFD).
        assert_eq!(incomplete_tail(b"ab\xff"), 0);
        let mut key = GroupKey::special(0, GV_STRING);
        let value = "日".repeat(22);
        key.kind = GV_STRING;
        key.bytes[..64].copy_from_slice(&value.as_bytes()[..64]);
        key.len = 64;
        key.cut = 1;
        assert_eq!(group_label(&key), format!("{}…", "日".repeat(21)));
    }
}
