//! The uprobe hook on the agent's side: resolving `[[probe]]`s to functions of files on this
//! host, attaching `dt_uprobe` to them, writing the uprobe tables of a rule set slot, the
//! start-up check of whether a uprobe may skip a call (`drop`), and exporting captured calls as
//! OTLP log records.
//!
//! **Lifecycle.** A rule set's probes are attached before the rule set becomes active and the
//! ones it no longer uses are detached after ([`Probes::prepare`], [`Probes::write_slot`],
//! [`Probes::finish`]), so a call is judged by exactly one rule set. An attachment is identified
//! by (probe name, file, offset, pid): one that stays the same across rule sets stays attached,
//! and its per-slot table entry is rewritten. Until the flip, a new attachment has no entry in
//! the active slot and the program ignores its calls; after it, a removed attachment has none and
//! is ignored until it is detached. Uprobes are set on the file (its inode), so processes that
//! mapped it before the attachment are covered as well as later ones.
//!
//! **Counting each call once.** See dt-ebpf's `uprobe.rs`: a call whose return address lies in
//! one of the probe's functions (its *family*: the four syslog functions of the preset, or the
//! one function of a custom probe) is the library calling itself; a jump from one family function
//! into another is recognised by the unchanged stack pointer and return address.
//!
//! The pieces: `resolve` (files and symbols), `plan` (a rule set's probes resolved, and their
//! table entries), `drop_support` (the start-up check), and [`crate::export::capture`] for
//! captured calls.

mod detach;
mod drop_support;
mod plan;
mod resolve;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use detach::Detacher;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use dt_ebpf_common::uprobe::{
    CommKey, MAX_PROBE_ENTRIES, ProbeEntry, ProbeFaults, ProbeGuard, ProbeRuleSet, ProbeTotals,
};

pub use drop_support::{DropSupport, NO_SKIP};
pub use resolve::{FnSym, elf_functions, resolve_binary};

use crate::{
    export::capture::{EntryMeta, Exporter},
    rules::{Diagnostic, UprobeSet},
    stats::UprobeStats,
};
use plan::{plan, table_entry};

/// The uprobe program that may fault a message's pages in (a sleepable uprobe), loaded where the
/// kernel allows it.
pub const PROGRAM_SLEEPABLE: &str = "dt_uprobe_sleepable";
/// The uprobe program elsewhere: a message on a page not mapped yet is unreadable.
pub const PROGRAM: &str = "dt_uprobe";
/// Every map of the uprobe hook (all pinned in pinned mode).
pub const MAPS: [&str; 7] = [
    "PROBE_RULES",
    "PROBE_ENTRIES",
    "PROBE_COMMS",
    "PROBE_TAILS",
    "PROBE_SCRATCH",
    "PROBE_EVENTS",
    "PROBE_TOTALS",
];
// ------------------------------------------------------------------------------------------
// Attaching

/// What identifies an attachment: the same probe on the same function of the same file, for
/// the same process (or all).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AttachKey {
    probe: String,
    path: PathBuf,
    offset: u64,
    pid: Option<u32>,
}

/// What [`Probes::attached_ids`] saw attached, and the captures' metadata then.
pub struct Attachments {
    ids: Vec<u32>,
    meta: HashMap<u32, EntryMeta>,
}

/// One function of a rule set's probes, resolved and attached: its entry id and its table entry
/// (generation not yet stamped).
#[derive(Clone, Debug)]
pub struct ReadyEntry {
    key: AttachKey,
    id: u32,
    entry: ProbeEntry,
}

struct Attached {
    key: AttachKey,
    id: u32,
    /// Dropping it detaches.
    link: UProbeLink,
}

/// Loads the uprobe program: with `fault_in` (`uprobe_fault_in`), the sleepable one, or where
/// loading it fails (a kernel older than 6.0), the other; the name of the one loaded.
fn load_program(ebpf: &mut Ebpf, fault_in: bool) -> anyhow::Result<&'static str> {
    let why_not = if !fault_in {
        "uprobe_fault_in is off".to_string()
    } else {
        match program(ebpf, PROGRAM_SLEEPABLE)?.load() {
            Ok(()) => {
                log::info!(
                    "uprobe messages: pages not yet mapped are faulted in (uprobe_fault_in, a \
                     sleepable uprobe)"
                );
                return Ok(PROGRAM_SLEEPABLE);
            }
            Err(e) => {
                let why = format!(
                    "loading the sleepable uprobe failed (a kernel older than 6.0 refuses it): {:#}",
                    anyhow::Error::new(e)
                );
                log::warn!("uprobe_fault_in: {why}");
                why
            }
        }
    };
    program(ebpf, PROGRAM)?
        .load()
        .context("loading the uprobe program")?;
    log::info!(
        "uprobe messages: a message on a page the process has not touched yet is unreadable \
         ({why_not})"
    );
    Ok(PROGRAM)
}

/// The sleepable program's faults, summed over the CPUs (zero when the map cannot be read).
pub fn faults(ebpf: &Ebpf) -> ProbeFaults {
    let Some(Ok(m)) = ebpf
        .map("PROBE_FAULTS")
        .map(PerCpuArray::<_, ProbeFaults>::try_from)
    else {
        return ProbeFaults::default();
    };
    let mut sum = ProbeFaults::default();
    if let Ok(per_cpu) = m.get(&0, 0) {
        for f in per_cpu.iter() {
            sum.pages += f.pages;
            sum.ns += f.ns;
        }
    }
    sum
}

/// Calls not evaluated because another call's evaluation on their CPU was preempted (see
/// `ProbeGuard`), summed over the CPUs (zero when the map cannot be read).
pub fn preempted(ebpf: &Ebpf) -> u64 {
    let Some(Ok(m)) = ebpf
        .map("PROBE_GUARD")
        .map(PerCpuArray::<_, ProbeGuard>::try_from)
    else {
        return 0;
    };
    m.get(&0, 0)
        .map(|per_cpu| per_cpu.iter().map(|g| g.preempted).sum())
        .unwrap_or(0)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .try_into()?)
}

/// The uprobe hook's state in the agent.
pub struct Probes {
    support: DropSupport,
    /// The loaded program: `PROGRAM_SLEEPABLE` or `PROGRAM`.
    program: &'static str,
    capture_endpoint: Option<String>,
    attached: Vec<Attached>,
    /// Where the next entry id is looked for (ids are reused as late as possible, so that a
    /// captured call still in the ring buffer is not credited to the next user of its id).
    next_id: u32,
    meta: Arc<Mutex<HashMap<u32, EntryMeta>>>,
    exporter: Option<Exporter>,
    /// Drops links on a thread of its own (see [`detach`]).
    detacher: Detacher,
}

impl Probes {
    /// Loads the uprobe program, finds out whether a uprobe may skip a call, and starts the
    /// capture exporter when there is an endpoint.
    pub fn start(
        ebpf: &mut Ebpf,
        capture_endpoint: Option<String>,
        captures_per_second: Option<u64>,
        fault_in: bool,
    ) -> anyhow::Result<Probes> {
        let support = drop_support::detect(ebpf);
        log::info!(
            "uprobe drop: {} ({})",
            if support.supported {
                "supported"
            } else {
                "not supported"
            },
            support.detail
        );
        let program = load_program(ebpf, fault_in)?;
        let meta = Arc::new(Mutex::new(HashMap::new()));
        let exporter = match &capture_endpoint {
            Some(url) => {
                let uri: hyper::Uri = url
                    .parse()
                    .with_context(|| format!("capture_endpoint {url:?}"))?;
                crate::export::http::target(&uri, "capture endpoint")?;
                let ring = RingBuf::try_from(
                    ebpf.take_map("PROBE_EVENTS")
                        .ok_or_else(|| anyhow!("map PROBE_EVENTS missing"))?,
                )?;
                log::info!("captured uprobe calls are exported to {url}");
                Some(Exporter::start(
                    ring,
                    uri,
                    meta.clone(),
                    captures_per_second,
                )?)
            }
            None => None,
        };
        Ok(Probes {
            support,
            program,
            capture_endpoint,
            attached: Vec::new(),
            next_id: 0,
            meta,
            exporter,
            detacher: Detacher::default(),
        })
    }

    /// Whether the loaded program faults in a message's pages the process has not touched yet.
    pub fn fault_in(&self) -> bool {
        self.program == PROGRAM_SLEEPABLE
    }

    /// Whether this kernel lets a uprobe skip a call, as found at start-up.
    pub fn drop_support(&self) -> &DropSupport {
        &self.support
    }

    /// The checks that depend on this kernel and this agent: `drop` needs a kernel where a
    /// uprobe can skip a call; `capture` needs a capture endpoint.
    pub fn check(&self, set: &UprobeSet) -> Result<(), Vec<Diagnostic>> {
        let mut diags = Vec::new();
        for d in &set.drops {
            let why = if self.support.supported {
                "dt does not implement skipping a call yet, although this kernel allows it"
            } else {
                NO_SKIP
            };
            diags.push(Diagnostic::new(
                &d.file,
                d.pos,
                format!(
                    "rule \"{}\": drop on hook \"{}\" is refused: {why}",
                    d.rule, d.hook
                ),
            ));
        }
        if self.capture_endpoint.is_none() {
            for c in &set.captures {
                diags.push(Diagnostic::new(
                    &c.file,
                    c.pos,
                    format!(
                        "rule \"{}\": capture on hook \"{}\" needs somewhere to send the calls: \
                         set capture_endpoint in the agent's config or run it with \
                         --capture-endpoint URL",
                        c.rule, c.hook
                    ),
                ));
            }
        }
        if diags.is_empty() { Ok(()) } else { Err(diags) }
    }

    /// Resolves the set's probes on this host and attaches every function not attached yet.
    /// On any error, whatever this call attached is detached again and nothing else changes.
    pub fn prepare(
        &mut self,
        ebpf: &mut Ebpf,
        set: &UprobeSet,
    ) -> Result<Vec<ReadyEntry>, Vec<Diagnostic>> {
        let plans = plan(set)?;
        let mut ready = Vec::new();
        let mut new_ids = Vec::new();
        let mut diags = Vec::new();
        for p in &plans {
            for e in &p.entries {
                let key = AttachKey {
                    probe: p.probe.def.name.value.clone(),
                    path: p.path.clone(),
                    offset: e.sym.offset,
                    pid: p.probe.def.pid.as_ref().map(|p| p.value),
                };
                let id = match self.attached.iter().find(|a| a.key == key) {
                    Some(a) => a.id,
                    None => match self.attach(ebpf, &key) {
                        Ok(id) => {
                            new_ids.push(id);
                            id
                        }
                        Err(why) => {
                            let def = &p.probe.def;
                            diags.push(Diagnostic::new(
                                &def.file,
                                def.pos,
                                format!(
                                    "probe \"{}\": cannot attach to {} in {}: {why}",
                                    def.name.value,
                                    e.symbol,
                                    p.path.display()
                                ),
                            ));
                            continue;
                        }
                    },
                };
                self.meta.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    id,
                    EntryMeta {
                        probe: p.probe.def.name.value.clone(),
                        symbol: e.symbol.clone(),
                        binary: p.path.clone(),
                        service: p.probe.def.service.as_ref().map(|s| s.value.clone()),
                    },
                );
                ready.push(ReadyEntry {
                    key,
                    id,
                    entry: table_entry(p, e),
                });
            }
        }
        if !diags.is_empty() {
            self.detach_where(|a| new_ids.contains(&a.id));
            return Err(diags);
        }
        Ok(ready)
    }

    /// What is attached now, and what the captures of each say (for
    /// [`keep_only`](Self::keep_only)).
    pub fn attached_ids(&self) -> Attachments {
        Attachments {
            ids: self.attached.iter().map(|a| a.id).collect(),
            meta: self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Undoes a [`prepare`](Self::prepare) whose rule set was not installed: detaches every
    /// function attached since `before` ([`attached_ids`](Self::attached_ids)), and the
    /// captures of the functions still attached say again what they said (`prepare` wrote the
    /// new set's probe and service for them).
    pub fn keep_only(&mut self, before: &Attachments) {
        self.detach_where(|a| !before.ids.contains(&a.id));
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = before.meta.clone();
    }

    /// Attaches and detaches again what [`prepare`](Self::prepare) would attach: the proof that
    /// every probe of the set can be attached, without changing anything.
    pub fn trial(&mut self, ebpf: &mut Ebpf, set: &UprobeSet) -> Result<(), Vec<Diagnostic>> {
        let before = self.attached_ids();
        let tried = self.prepare(ebpf, set).map(|_| ());
        self.keep_only(&before);
        tried
    }

    fn attach(&mut self, ebpf: &mut Ebpf, key: &AttachKey) -> Result<u32, String> {
        let id = self.free_id().ok_or_else(|| {
            let detaching = self.detacher.pending_ids().len();
            if detaching > 0 {
                format!(
                    "all {MAX_PROBE_ENTRIES} uprobe attachments are in use ({detaching} of them \
                     by functions still being detached: the kernel waits for a probed call \
                     that waits for a page of its message, see uprobe_fault_in)"
                )
            } else {
                format!("all {MAX_PROBE_ENTRIES} uprobe attachments are in use")
            }
        })?;
        let program = self.program;
        let prog: &mut UProbe = ebpf
            .program_mut(program)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| format!("program {program} missing"))?;
        let scope = match key.pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(key.offset),
            cookie: Some(id as u64),
        };
        let link_id = prog
            .attach(point, &key.path, scope)
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        let link = prog.take_link(link_id).map_err(|e| e.to_string())?;
        self.attached.push(Attached {
            key: key.clone(),
            id,
            link,
        });
        self.next_id = (id + 1) % MAX_PROBE_ENTRIES;
        Ok(id)
    }

    /// An id neither attached nor still being detached (a call through a link being detached
    /// must not find another function's entry under its id).
    fn free_id(&self) -> Option<u32> {
        let detaching = self.detacher.pending_ids();
        (0..MAX_PROBE_ENTRIES)
            .map(|i| (self.next_id + i) % MAX_PROBE_ENTRIES)
            .find(|id| self.attached.iter().all(|a| a.id != *id) && !detaching.contains(id))
    }

    /// Detaches the attachments `gone` says, through the detacher; the number detached.
    fn detach_where(&mut self, gone: impl Fn(&Attached) -> bool) -> usize {
        let (detached, kept) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition::<Vec<_>, _>(|a| gone(a));
        self.attached = kept;
        let n = detached.len();
        self.detacher
            .detach(detached.into_iter().map(|a| (a.id, a.link)).collect());
        n
    }

    /// Writes a rule set slot's uprobe tables: the entries of `ready`, the process names, and
    /// the rules, all stamped `generation`. The slot must not be the active one.
    pub fn write_slot(
        &self,
        ebpf: &mut Ebpf,
        slot: u32,
        generation: u64,
        set: &UprobeSet,
        ready: &[ReadyEntry],
    ) -> anyhow::Result<()> {
        let mut rules: Array<_, ProbeRuleSet> = Array::try_from(map(ebpf, "PROBE_RULES")?)?;
        rules.set(slot, ProbeRuleSet::EMPTY, 0)?;
        {
            let mut entries: Array<_, ProbeEntry> = Array::try_from(map(ebpf, "PROBE_ENTRIES")?)?;
            for r in ready {
                let mut e = r.entry;
                e.generation = generation;
                entries.set(slot * MAX_PROBE_ENTRIES + r.id, e, 0)?;
            }
        }
        {
            let mut comms: BpfHashMap<_, CommKey, u64> =
                BpfHashMap::try_from(map(ebpf, "PROBE_COMMS")?)?;
            let stale: Vec<CommKey> = comms
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.slot == slot)
                .collect();
            for k in stale {
                comms.remove(&k)?;
            }
            for (comm, bits) in &set.comms {
                comms.insert(CommKey { slot, comm: *comm }, bits, 0)?;
            }
        }
        let mut rs = set.rules;
        rs.generation = generation;
        let mut rules: Array<_, ProbeRuleSet> = Array::try_from(map(ebpf, "PROBE_RULES")?)?;
        rules.set(slot, rs, 0)?;
        Ok(())
    }

    /// After the flip: detaches every function the active rule set (`ready`) does not use.
    pub fn finish(&mut self, ready: &[ReadyEntry]) {
        let detached = self.detach_where(|a| !ready.iter().any(|r| r.key == a.key));
        if detached > 0 || !ready.is_empty() {
            log::info!(
                "uprobes: {} function(s) attached, {detached} detached",
                self.attached.len()
            );
        }
    }

    /// The hook's counters.
    pub fn stats(&self, ebpf: &Ebpf) -> UprobeStats {
        let mut s = totals(ebpf.map("PROBE_TOTALS"));
        s.attached = self.attached.len() as u64;
        s.detaching = self.detacher.pending_ids().len() as u64;
        s.drop_supported = self.support.supported;
        s.fault_in = self.fault_in();
        let f = faults(ebpf);
        s.pages_faulted_in = f.pages;
        s.preempted = preempted(ebpf);
        if let Some(x) = &self.exporter {
            (s.exported, s.export_failed, s.capture_throttled) = x.counts();
        }
        s
    }
}

/// The uprobe counters of pinned state (no agent running: nothing attached).
pub fn pinned_stats(dir: &Path) -> UprobeStats {
    let Ok(data) = MapData::from_pin(dir.join("PROBE_TOTALS")) else {
        return UprobeStats::default();
    };
    totals(Some(&aya::maps::Map::PerCpuArray(data)))
}

fn totals(m: Option<&aya::maps::Map>) -> UprobeStats {
    let mut s = UprobeStats::default();
    let Some(m) = m else {
        return s;
    };
    let Ok(t) = PerCpuArray::<_, ProbeTotals>::try_from(m) else {
        return s;
    };
    if let Ok(values) = t.get(&0, 0) {
        for v in values.iter() {
            s.calls += v.calls;
            s.nested += v.nested;
            s.unreadable += v.unreadable;
            s.truncated += v.truncated;
            s.captured += v.captured;
            s.capture_lost += v.capture_lost;
        }
    }
    s
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}
