//! Loading, attaching and feeding the kernel programs.
//!
//! An [`Agent`] owns the loaded eBPF object. It installs rule sets into the inactive slot of
//! the double-buffered `RULESETS` map and flips `CONTROL.active` in one write, reads the per-CPU
//! counters back, and on drop switches to pass-through, waits for corked requests to drain, and
//! detaches everything.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, SockHash},
    programs::{SkMsg, SockOps, links::CgroupAttachMode},
};
use dt_ebpf_common::{
    AcRow, Control, DEFAULT_MAX_REQUEST, LAYOUT_VERSION, MAX_AC_STATES, MAX_REQUEST_CEILING,
    Passthrough, RuleCounters, RuleSet, StrKey, Totals,
};

use crate::{
    rules::{self, Compiled, SlotTable},
    stats::{RuleStats, Stats, TotalStats},
};

static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dt"));

/// What `dt-agent run` needs to attach.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Directory whose `*.toml` files make the rule set.
    pub rules_dir: PathBuf,
    /// OTLP/HTTP ports whose connections are hooked.
    pub ports: Vec<u16>,
    /// cgroup v2 directory for sock_ops (default: the root of the v2 hierarchy).
    pub cgroup: Option<PathBuf>,
    /// Requests longer than this pass through as `oversize`.
    pub max_request: u32,
}

impl AgentConfig {
    /// Defaults for a rules directory: port 4318, the v2 root, the default size bound.
    pub fn new(rules_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            rules_dir: rules_dir.into(),
            ports: vec![4318],
            cgroup: None,
            max_request: DEFAULT_MAX_REQUEST,
        }
    }
}

/// A rule the agent has counted for, active or not.
#[derive(Clone, Debug)]
struct KnownRule {
    name: String,
    action: String,
    hook: String,
    active: bool,
}

/// A loaded and attached agent. Dropping it switches to pass-through, drains, and detaches.
pub struct Agent {
    ebpf: Ebpf,
    /// Held so the SockHash (and the sk_msg attachment to it) lives as long as the agent.
    _socks: SockHash<MapData, u64>,
    /// Rule name → counter slot, for every name seen since start.
    slots: SlotTable,
    known: BTreeMap<u16, KnownRule>,
    generation: u64,
    active_slot: u32,
    /// Whether the other slot has ever been active (then rewriting it needs a grace period).
    other_used: bool,
}

/// How long a rewritten slot is left alone after it was marked stale, so that any walk that
/// read the old contents has finished. A walk is one program run: microseconds to a millisecond.
const SLOT_GRACE: Duration = Duration::from_millis(20);
/// How long an exiting agent waits for corked requests to complete before detaching.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

impl Agent {
    /// Compiles the rules, loads the programs, installs the rule set and attaches. On any error
    /// nothing stays attached.
    pub fn start(cfg: AgentConfig) -> anyhow::Result<Agent> {
        let mut slots = SlotTable::default();
        let compiled = compile_dir(&cfg.rules_dir, &mut slots)?;
        if cfg.ports.is_empty() {
            bail!("no ports to hook: give at least one --port");
        }
        if cfg.max_request == 0 || cfg.max_request > MAX_REQUEST_CEILING {
            bail!(
                "max_request must be between 1 and {MAX_REQUEST_CEILING} bytes, not {}",
                cfg.max_request
            );
        }
        let cgroup = match &cfg.cgroup {
            Some(p) => p.clone(),
            None => cgroup2_root()?,
        };
        let cgroup_file =
            File::open(&cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;

        bump_memlock();
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJ)
            .context("loading dt's eBPF object")?;
        {
            let mut control: Array<_, Control> = Array::try_from(map(&mut ebpf, "CONTROL")?)?;
            control.set(
                0,
                Control {
                    active: Control::pack(0, 0),
                    enabled: 1,
                    layout: LAYOUT_VERSION,
                    max_request: cfg.max_request,
                    _pad: 0,
                },
                0,
            )?;
            let mut ports: HashMap<_, u32, u8> = HashMap::try_from(map(&mut ebpf, "PORTS")?)?;
            for p in &cfg.ports {
                ports.insert(*p as u32, 1, 0)?;
            }
        }
        let socks: SockHash<MapData, u64> = SockHash::try_from(
            ebpf.take_map("SOCKS")
                .ok_or_else(|| anyhow!("map SOCKS missing"))?,
        )?;
        let mut agent = Agent {
            ebpf,
            _socks: socks,
            slots,
            known: BTreeMap::new(),
            generation: 0,
            active_slot: 1,
            other_used: false,
        };
        agent.install(&compiled)?;
        {
            let fd = agent._socks.fd().try_clone()?;
            let prog: &mut SkMsg = agent
                .ebpf
                .program_mut("dt_msg")
                .ok_or_else(|| anyhow!("program dt_msg missing"))?
                .try_into()?;
            prog.load().context("loading the sk_msg program")?;
            prog.attach(&fd)
                .context("attaching sk_msg to the SockHash")?;
        }
        {
            let prog: &mut SockOps = agent
                .ebpf
                .program_mut("dt_sockops")
                .ok_or_else(|| anyhow!("program dt_sockops missing"))?
                .try_into()?;
            prog.load().context("loading the sock_ops program")?;
            prog.attach(cgroup_file, CgroupAttachMode::Single)
                .with_context(|| format!("attaching sock_ops to {}", cgroup.display()))?;
        }
        log::info!(
            "attached: ports {:?}, cgroup {}, {} rules, generation {}",
            cfg.ports,
            cgroup.display(),
            agent.active_rules(),
            agent.generation
        );
        Ok(agent)
    }

    /// Compiles the rule files of `dir` and makes them the active rule set, as a new
    /// generation. On any error the active set stays as it was.
    pub fn reload(&mut self, dir: &Path) -> anyhow::Result<u64> {
        let mut slots = self.slots.clone();
        let compiled = compile_dir(dir, &mut slots)?;
        self.install(&compiled)?;
        self.slots = slots;
        Ok(self.generation)
    }

    /// The active rule set's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn active_rules(&self) -> usize {
        self.known.values().filter(|r| r.active).count()
    }

    /// Makes `compiled` the active rule set, as a new generation: it is written into the
    /// inactive slot, then one write to `CONTROL.active` flips to it.
    fn install(&mut self, compiled: &Compiled) -> anyhow::Result<()> {
        let slot = 1 - self.active_slot;
        let generation = self.generation + 1;
        let mut rulesets: Array<_, RuleSet> = Array::try_from(map(&mut self.ebpf, "RULESETS")?)?;
        // Mark the slot stale first: a request that captured it under its old generation passes
        // through instead of being judged by a half-written set.
        rulesets.set(slot, RuleSet::EMPTY, 0)?;
        if self.other_used {
            thread::sleep(SLOT_GRACE);
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
            let mut ac: Array<_, AcRow> = Array::try_from(map(&mut self.ebpf, "AC")?)?;
            for (i, row) in compiled.ac.iter().enumerate() {
                ac.set(slot * MAX_AC_STATES + i as u32, row, 0)?;
            }
        }
        let mut rs = compiled.ruleset;
        rs.generation = generation;
        let mut rulesets: Array<_, RuleSet> = Array::try_from(map(&mut self.ebpf, "RULESETS")?)?;
        rulesets.set(slot, rs, 0)?;
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        let mut c = control.get(&0, 0)?;
        c.active = Control::pack(generation, slot);
        control.set(0, c, 0)?;

        self.other_used = self.generation > 0;
        self.active_slot = slot;
        self.generation = generation;
        for r in self.known.values_mut() {
            r.active = false;
        }
        for r in &compiled.rules {
            self.known.insert(
                r.slot,
                KnownRule {
                    name: r.name.clone(),
                    action: r.action.clone(),
                    hook: r.hook.clone(),
                    active: true,
                },
            );
        }
        Ok(())
    }

    /// Turns rule evaluation on or off (the rip cord). Off, every request passes untouched.
    pub fn set_enabled(&mut self, enabled: bool) -> anyhow::Result<()> {
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        let mut c = control.get(&0, 0)?;
        c.enabled = enabled as u32;
        control.set(0, c, 0)?;
        Ok(())
    }

    /// Reads every counter back, summed over all CPUs.
    pub fn stats(&self) -> anyhow::Result<Stats> {
        let control: Array<_, Control> = Array::try_from(map_ref(&self.ebpf, "CONTROL")?)?;
        let c = control.get(&0, 0)?;
        let counters: PerCpuArray<_, RuleCounters> =
            PerCpuArray::try_from(map_ref(&self.ebpf, "RULE_COUNTERS")?)?;
        let mut rules = Vec::new();
        for (slot, r) in &self.known {
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
                action: r.action.clone(),
                hook: r.hook.clone(),
                active: r.active,
                matched: sum.matched,
                kept: sum.kept,
                dropped: sum.dropped,
                dropped_bytes: sum.dropped_bytes,
                redacted: sum.redacted,
            });
        }
        // Active rules first, in rule-set order (slot order is assignment order).
        rules.sort_by_key(|r| !r.active);
        let t = self.totals()?;
        let passthrough = Passthrough::ALL
            .iter()
            .map(|(why, key)| (key.to_string(), t.passthrough[*why as usize]))
            .collect();
        Ok(Stats {
            generation: c.active_generation(),
            enabled: c.enabled != 0,
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
                passthrough,
            },
        })
    }

    fn totals(&self) -> anyhow::Result<Totals> {
        let totals: PerCpuArray<_, Totals> = PerCpuArray::try_from(map_ref(&self.ebpf, "TOTALS")?)?;
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
            for (a, b) in t.passthrough.iter_mut().zip(v.passthrough.iter()) {
                *a += b;
            }
        }
        Ok(t)
    }

    /// Switches to pass-through and waits (bounded) until no request is held corked, so that
    /// detaching frees no one's bytes.
    fn drain(&mut self) {
        if let Err(e) = self.set_enabled(false) {
            log::warn!("could not switch to pass-through before detaching: {e:#}");
            return;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            match self.totals() {
                Ok(t) if t.corked <= t.uncorked => return,
                Ok(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(t) => {
                    log::warn!(
                        "detaching with {} request(s) still corked after {:?}",
                        t.corked - t.uncorked,
                        DRAIN_TIMEOUT
                    );
                    return;
                }
                Err(e) => {
                    log::warn!("reading counters while draining: {e:#}");
                    return;
                }
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.drain();
        // Dropping the Ebpf object and the SockHash detaches the programs and frees the maps.
    }
}

/// Every problem of a rule set that was refused, as `file:line:column: message` lines.
#[derive(Debug)]
pub struct RuleErrors(pub Vec<rules::Diagnostic>);

impl std::fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// Compiles every rule file of a directory, or fails with [`RuleErrors`].
pub fn compile_dir(dir: &Path, slots: &mut SlotTable) -> anyhow::Result<Compiled> {
    let defs = rules::load_dir(dir).map_err(RuleErrors)?;
    Ok(rules::compile(&defs, slots).map_err(RuleErrors)?)
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// The mount point of the cgroup v2 hierarchy, from /proc/mounts.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .ok_or_else(|| {
            anyhow!("no cgroup v2 hierarchy is mounted (see /proc/mounts); give --cgroup")
        })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn bump_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}
