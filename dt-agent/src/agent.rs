//! Loading, attaching and feeding the kernel programs.
//!
//! An [`Agent`] owns the loaded eBPF object. It installs rule sets into the inactive slot of
//! the double-buffered `RULESETS` map and flips `CONTROL.active` in one write, and reads the
//! per-CPU counters back.
//!
//! Without pinning, dropping the agent switches to pass-through, waits (with no deadline) until
//! no request is held corked, and detaches everything (see [`crate::drain`]). With pinning (`pin_dir`), every map and the sock_ops link are
//! pinned under `<pin_dir>/v<LAYOUT_VERSION>/`: the programs go on filtering after the agent
//! exits or crashes, and the next agent adopts the pinned state (rule set, generation, counters,
//! name→slot table) instead of starting afresh.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, SockHash},
    programs::{
        SkMsg, SockOps,
        links::{CgroupAttachMode, FdLink, PinnedLink},
        sk_msg::SkMsgLink,
    },
};
use dt_ebpf_common::{
    ACTION_CAPTURE, ACTION_COUNT, ACTION_DROP, ACTION_RATE_LIMIT, ACTION_REDACT, ACTION_SAMPLE,
    AcRow, Control, DEFAULT_MAX_REQUEST, Held, LAYOUT_VERSION, MAX_AC_STATES, MAX_NAME_LEN,
    MAX_REQUEST_CEILING, NameEntry, NameKey, Passthrough, RuleCounters, RuleSet, StrKey, Totals,
};

use crate::{
    drain::{self, HeldRequest, Holding},
    probes::{self, Probes},
    rules::{self, Compiled, SlotTable},
    stats::{RuleStats, Stats, TotalStats},
};

static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dt"));

/// Every map of the socket hook, all pinned in pinned mode; the uprobe
/// hook's are `probes::MAPS` (see `all_maps`).
const MAPS: [&str; 13] = [
    "CONTROL",
    "PORTS",
    "SOCKS",
    "RULESETS",
    "STRINGS",
    "AC",
    "SAMPLES",
    "RATES",
    "RULE_COUNTERS",
    "TOTALS",
    "NAMES",
    "SOCK_STATE",
    "HELD",
];

/// Every map of the object: the socket hook's, then the uprobe hook's.
fn all_maps() -> impl Iterator<Item = &'static str> {
    MAPS.into_iter().chain(probes::MAPS)
}
/// The pinned sock_ops cgroup link.
const SOCKOPS_LINK: &str = "sockops_link";
/// Where pins go unless configured otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dt";

/// The pin directory for this layout under `root`.
pub fn pin_dir(root: &Path) -> PathBuf {
    root.join(format!("v{LAYOUT_VERSION}"))
}

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
    /// Pin maps and links under this root (versioned below it); `None`: no pinning.
    pub pin_root: Option<PathBuf>,
    /// Where captured uprobe calls are posted as OTLP logs (`http://.../v1/logs`); `None`: no
    /// capture rules are accepted.
    pub capture_endpoint: Option<String>,
}

impl AgentConfig {
    /// Defaults for a rules directory: port 4318, the v2 root, the default size bound, no pins.
    pub fn new(rules_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            rules_dir: rules_dir.into(),
            ports: vec![4318],
            cgroup: None,
            max_request: DEFAULT_MAX_REQUEST,
            pin_root: None,
            capture_endpoint: None,
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

/// The sock_ops attachment: a pinned link in pinned mode, else one that detaches on drop.
enum SockOpsAttachment {
    Owned(#[allow(dead_code)] FdLink),
    Pinned(PinnedLink),
}

/// A loaded and attached agent.
pub struct Agent {
    ebpf: Ebpf,
    /// Held so the SockHash (and the sk_msg attachment to it) lives as long as the agent.
    socks: SockHash<MapData, u64>,
    sk_msg: Option<SkMsgLink>,
    sock_ops: Option<SockOpsAttachment>,
    /// The pin directory, in pinned mode.
    pins: Option<PathBuf>,
    /// Rule name → counter slot, for every name seen.
    slots: SlotTable,
    known: BTreeMap<u16, KnownRule>,
    /// The active rule set's rules.
    active: Vec<rules::CompiledRule>,
    generation: u64,
    active_slot: u32,
    /// Whether the other slot has ever been active (then rewriting it needs a grace period).
    other_used: bool,
    /// The agent adopted pinned state left by an earlier one.
    adopted: bool,
    /// The uprobe hook: attachments, drop support, capture export.
    probes: Probes,
    /// Detach at drop without waiting for held requests (they are lost): a forced stop.
    no_drain: bool,
}

/// How long a rewritten slot is left alone after it was marked stale, so that any walk that
/// read the old contents has finished. A walk is one program run: microseconds to a millisecond.
const SLOT_GRACE: Duration = Duration::from_millis(20);

impl Agent {
    /// Compiles the rules, loads the programs (adopting pinned state when there is some),
    /// installs the rule set and attaches. On a rule error nothing is loaded, pinned or
    /// attached.
    pub fn start(cfg: AgentConfig) -> anyhow::Result<Agent> {
        if cfg.ports.is_empty() {
            bail!("no ports to hook: give at least one --port");
        }
        if cfg.max_request == 0 || cfg.max_request > MAX_REQUEST_CEILING {
            bail!(
                "max_request must be between 1 and {MAX_REQUEST_CEILING} bytes, not {}",
                cfg.max_request
            );
        }
        let pins = cfg.pin_root.as_deref().map(pin_dir);
        if let Some(root) = cfg.pin_root.as_deref() {
            refuse_other_layouts(root)?;
        }
        let adopting = pins.as_deref().is_some_and(|d| d.join("CONTROL").exists());
        let (mut slots, known) = if adopting {
            let dir = pins.as_deref().unwrap();
            check_pinned_layout(dir)?;
            read_names(dir)?
        } else {
            (SlotTable::default(), BTreeMap::new())
        };
        let compiled = compile_dir(&cfg.rules_dir, &mut slots)?;
        let cgroup = match &cfg.cgroup {
            Some(p) => p.clone(),
            None => cgroup2_root()?,
        };
        let cgroup_file =
            File::open(&cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;

        bump_memlock();
        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&str, PathBuf)> = match &pins {
            Some(dir) => {
                ensure_bpffs(cfg.pin_root.as_deref().unwrap())?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the pin directory {}", dir.display()))?;
                all_maps().map(|m| (m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJ).context("loading dt's eBPF object")?;
        let probes = Probes::start(&mut ebpf, cfg.capture_endpoint.clone())?;

        let (generation, active_slot) = {
            let mut control: Array<_, Control> = Array::try_from(map(&mut ebpf, "CONTROL")?)?;
            let mut c = control.get(&0, 0)?;
            if !adopting {
                c = Control {
                    active: Control::pack(0, 0),
                    enabled: 1,
                    layout: LAYOUT_VERSION,
                    max_request: 0,
                    _pad: 0,
                };
            }
            c.max_request = cfg.max_request;
            control.set(0, c, 0)?;
            (c.active_generation(), c.active_slot())
        };
        {
            let mut ports: HashMap<_, u32, u8> = HashMap::try_from(map(&mut ebpf, "PORTS")?)?;
            let old: Vec<u32> = ports.keys().filter_map(Result::ok).collect();
            for p in old {
                ports.remove(&p)?;
            }
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
            socks,
            sk_msg: None,
            sock_ops: None,
            pins,
            slots,
            known,
            active: Vec::new(),
            generation,
            // Before the first install: the slot that is not active, so the first set goes into
            // the other one (on a fresh start both are empty and slot 0 is written first).
            active_slot: if adopting { active_slot } else { 1 },
            other_used: adopting,
            adopted: adopting,
            probes,
            no_drain: false,
        };
        // uprobe hook: what depends on this kernel (drop) and this agent (capture endpoint).
        agent.probes.check(&compiled.uprobe).map_err(RuleErrors)?;
        agent.install(&compiled)?;
        agent.attach_sk_msg()?;
        agent.attach_sock_ops(cgroup_file, &cgroup)?;
        log::info!(
            "{}: ports {:?}, cgroup {}, {} rules, generation {}{}",
            if adopting {
                "adopted pinned state"
            } else {
                "attached"
            },
            cfg.ports,
            cgroup.display(),
            agent.active_rules(),
            agent.generation,
            match &agent.pins {
                Some(d) => format!(", pinned under {}", d.display()),
                None => String::new(),
            }
        );
        Ok(agent)
    }

    fn attach_sk_msg(&mut self) -> anyhow::Result<()> {
        let fd = self.socks.fd().try_clone()?;
        let prog: &mut SkMsg = self
            .ebpf
            .program_mut("dt_msg")
            .ok_or_else(|| anyhow!("program dt_msg missing"))?
            .try_into()?;
        prog.load().context("loading the sk_msg program")?;
        // On a SockHash that already has a program (adopted pins), this replaces it: sockets
        // that join from now on run the new one.
        let id = prog
            .attach(&fd)
            .context("attaching sk_msg to the SockHash")?;
        self.sk_msg = Some(prog.take_link(id)?);
        Ok(())
    }

    fn attach_sock_ops(&mut self, cgroup_file: File, cgroup: &Path) -> anyhow::Result<()> {
        let pinned = self.pins.as_ref().map(|d| d.join(SOCKOPS_LINK));
        let prog: &mut SockOps = self
            .ebpf
            .program_mut("dt_sockops")
            .ok_or_else(|| anyhow!("program dt_sockops missing"))?
            .try_into()?;
        prog.load().context("loading the sock_ops program")?;
        if let Some(path) = pinned.as_deref().filter(|p| p.exists()) {
            // A pinned link from an earlier agent: swap its program for ours in place, so there
            // is never a second sock_ops program beside it.
            let prog_fd = prog.fd()?.as_fd().as_raw_fd();
            link_update(path, prog_fd)
                .with_context(|| format!("replacing the program of {}", path.display()))?;
            let link = PinnedLink::from_pin(path)
                .with_context(|| format!("opening the pinned link {}", path.display()))?;
            self.sock_ops = Some(SockOpsAttachment::Pinned(link));
            return Ok(());
        }
        let id = prog
            .attach(cgroup_file, CgroupAttachMode::Single)
            .with_context(|| format!("attaching sock_ops to {}", cgroup.display()))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        self.sock_ops = Some(match pinned {
            Some(path) => SockOpsAttachment::Pinned(
                link.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?,
            ),
            None => SockOpsAttachment::Owned(link),
        });
        Ok(())
    }

    /// Compiles the rule files of `dir` and makes them the active rule set, as a new
    /// generation. On any error the active set stays as it was.
    pub fn reload(&mut self, dir: &Path) -> anyhow::Result<u64> {
        let defs = rules::load_dir(dir).map_err(RuleErrors)?;
        let (compiled, slots) = self.compile_defs(&defs)?;
        self.install_compiled(&compiled, slots)?;
        Ok(self.generation)
    }

    /// Compiles rules against this agent's counter slots, without installing anything.
    /// Returns the compiled set and the slot table it needs.
    pub fn compile_defs(&self, defs: &[rules::RuleDef]) -> anyhow::Result<(Compiled, SlotTable)> {
        let mut slots = self.slots.clone();
        let compiled = rules::compile(defs, &mut slots).map_err(RuleErrors)?;
        self.probes.check(&compiled.uprobe).map_err(RuleErrors)?;
        Ok((compiled, slots))
    }

    /// Everything [`compile_defs`](Self::compile_defs) checks, plus that every probe the rules
    /// use can be attached (it is attached and detached again). Nothing changes.
    pub fn check_defs(&mut self, defs: &[rules::RuleDef]) -> anyhow::Result<()> {
        let (compiled, _) = self.compile_defs(defs)?;
        self.probes
            .trial(&mut self.ebpf, &compiled.uprobe)
            .map_err(RuleErrors)?;
        Ok(())
    }

    /// Whether this kernel lets a uprobe skip a call (what `drop` on a uprobe hook needs), as
    /// found when the agent started.
    pub fn uprobe_drop_support(&self) -> &probes::DropSupport {
        self.probes.drop_support()
    }

    /// Makes a compiled set (from [`compile_defs`](Self::compile_defs)) the active one, as a
    /// new generation.
    pub fn install_compiled(
        &mut self,
        compiled: &Compiled,
        slots: SlotTable,
    ) -> anyhow::Result<()> {
        self.slots = slots;
        self.install(compiled)
    }

    /// The active rules, in evaluation order.
    pub fn active_rules_info(&self) -> Vec<crate::control::RuleInfo> {
        self.active
            .iter()
            .map(|r| crate::control::RuleInfo {
                name: r.name.clone(),
                action: r.action.clone(),
                hook: r.hook.clone(),
                file: r.file.clone(),
                line: r.line,
            })
            .collect()
    }

    /// The active rule set's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether this agent adopted pinned state.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The pin directory, in pinned mode.
    pub fn pins(&self) -> Option<&Path> {
        self.pins.as_deref()
    }

    fn active_rules(&self) -> usize {
        self.known.values().filter(|r| r.active).count()
    }

    /// Makes `compiled` the active rule set, as a new generation: it is written into the
    /// inactive slot, then one write to `CONTROL.active` flips to it.
    fn install(&mut self, compiled: &Compiled) -> anyhow::Result<()> {
        // uprobe hook: attach the probes the new set uses first; on failure nothing changed.
        let probes_ready = self
            .probes
            .prepare(&mut self.ebpf, &compiled.uprobe)
            .map_err(RuleErrors)?;
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
        // uprobe hook: the slot's uprobe tables, under the same generation.
        self.probes.write_slot(
            &mut self.ebpf,
            slot,
            generation,
            &compiled.uprobe,
            &probes_ready,
        )?;
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        let mut c = control.get(&0, 0)?;
        c.active = Control::pack(generation, slot);
        control.set(0, c, 0)?;
        // uprobe hook: detach what the new set no longer uses.
        self.probes.finish(&probes_ready);

        self.other_used = true;
        self.active_slot = slot;
        self.generation = generation;
        for r in self.known.values_mut() {
            r.active = false;
        }
        self.active = compiled.rules.clone();
        // A rule on several hooks (one counter) lists them all: "otlp,uprobe:syslog".
        let mut hooks: BTreeMap<u16, String> = BTreeMap::new();
        for r in &compiled.rules {
            hooks
                .entry(r.slot)
                .and_modify(|h| {
                    h.push(',');
                    h.push_str(&r.hook);
                })
                .or_insert_with(|| r.hook.clone());
        }
        for r in &compiled.rules {
            self.known.insert(
                r.slot,
                KnownRule {
                    name: r.name.clone(),
                    action: r.action.clone(),
                    hook: hooks.get(&r.slot).cloned().unwrap_or_default(),
                    active: true,
                },
            );
        }
        self.write_names()?;
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
                    action: action_code(&r.action),
                    active: r.active as u8,
                    _pad: 0,
                },
                0,
            )?;
        }
        Ok(())
    }

    /// Turns rule evaluation on or off (the rip cord). Off, every request passes untouched.
    pub fn set_enabled(&mut self, enabled: bool) -> anyhow::Result<()> {
        let mut control: Array<_, Control> = Array::try_from(map(&mut self.ebpf, "CONTROL")?)?;
        set_enabled_in(&mut control, enabled)
    }

    /// Reads every counter back, summed over all CPUs.
    pub fn stats(&self) -> anyhow::Result<Stats> {
        let control: Array<_, Control> = Array::try_from(map_ref(&self.ebpf, "CONTROL")?)?;
        let counters: PerCpuArray<_, RuleCounters> =
            PerCpuArray::try_from(map_ref(&self.ebpf, "RULE_COUNTERS")?)?;
        let totals: PerCpuArray<_, Totals> = PerCpuArray::try_from(map_ref(&self.ebpf, "TOTALS")?)?;
        let mut stats = build_stats(&control, &counters, &totals, &self.known)?;
        stats.uprobes = self.probes.stats(&self.ebpf);
        Ok(stats)
    }

    /// Switches to pass-through: requests that are not held yet will not be, and the rip cord
    /// stays pulled in the pinned state. The first step of every detach.
    pub fn begin_drain(&mut self) -> anyhow::Result<()> {
        self.set_enabled(false)
            .context("switching to pass-through before detaching")
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

    /// Switches to pass-through and waits, with no deadline, until no request is held corked,
    /// so that detaching frees no one's bytes. Says every few seconds who it waits for.
    fn drain(&mut self) {
        if let Err(e) = self.begin_drain() {
            log::warn!("{e:#}");
            return;
        }
        let mut next_log = Instant::now();
        loop {
            let h = match self.holding() {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("cannot read the held requests ({e:#}); detaching");
                    return;
                }
            };
            if h.is_empty() {
                return;
            }
            if Instant::now() >= next_log {
                log::info!("waiting before detaching: {h}");
                next_log = Instant::now() + drain::LOG_EVERY;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes dropping this agent detach at once, without waiting for held requests (they are
    /// lost): the forced stop.
    pub fn skip_drain(&mut self) {
        self.no_drain = true;
    }

    /// Detaches everything and removes every pin: nothing of dt stays in the kernel once the
    /// agent is dropped. Requests already corked are drained first.
    pub fn uninstall(&mut self) -> anyhow::Result<()> {
        if !self.no_drain {
            self.drain();
        }
        // Dropping the sk_msg link detaches the program from the SockHash.
        drop(self.sk_msg.take());
        if let Some(att) = self.sock_ops.take() {
            match att {
                SockOpsAttachment::Pinned(link) => {
                    // Unpinned and dropped: the link, and the program, go.
                    drop(link.unpin().context("unpinning the sock_ops link")?);
                }
                SockOpsAttachment::Owned(link) => drop(link),
            }
        }
        if let Some(dir) = self.pins.take() {
            remove_pins(&dir)?;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.pins.is_some() {
            // Pinned: everything stays attached and filtering goes on; the next agent adopts it.
            // The sk_msg attachment is not a pinnable link and would detach on drop: keep it.
            if let Some(link) = self.sk_msg.take() {
                std::mem::forget(link);
            }
            return;
        }
        if !self.no_drain {
            self.drain();
        }
        // Dropping the links, the Ebpf object and the SockHash detaches the programs and frees
        // the maps.
    }
}

// ------------------------------------------------------------------------------------------
// Pinned state without an agent

/// `stats` from the pinned maps, with no agent running.
pub fn pinned_stats(root: &Path) -> anyhow::Result<Stats> {
    let dir = pin_dir(root);
    check_pinned_layout(&dir)?;
    let control: Array<_, Control> = Array::try_from(pinned_map(&dir, "CONTROL", Map::Array)?)?;
    let counters: PerCpuArray<_, RuleCounters> =
        PerCpuArray::try_from(pinned_map(&dir, "RULE_COUNTERS", Map::PerCpuArray)?)?;
    let totals: PerCpuArray<_, Totals> =
        PerCpuArray::try_from(pinned_map(&dir, "TOTALS", Map::PerCpuArray)?)?;
    let (_, known) = read_names(&dir)?;
    let mut stats = build_stats(&control, &counters, &totals, &known)?;
    stats.uprobes = probes::pinned_stats(&dir);
    Ok(stats)
}

/// The rip cord on the pinned state, with no agent running.
pub fn pinned_set_enabled(root: &Path, enabled: bool) -> anyhow::Result<()> {
    let dir = pin_dir(root);
    check_pinned_layout(&dir)?;
    let mut control: Array<_, Control> = Array::try_from(pinned_map(&dir, "CONTROL", Map::Array)?)?;
    set_enabled_in(&mut control, enabled)
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
fn refuse_other_layouts(root: &Path) -> anyhow::Result<()> {
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

fn check_pinned_layout(dir: &Path) -> anyhow::Result<()> {
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

/// The name→slot table and the rules it names, from the pinned `NAMES` map.
fn read_names(dir: &Path) -> anyhow::Result<(SlotTable, BTreeMap<u16, KnownRule>)> {
    let names: HashMap<_, NameKey, NameEntry> =
        HashMap::try_from(pinned_map(dir, "NAMES", Map::HashMap)?)?;
    let mut table = BTreeMap::new();
    let mut known = BTreeMap::new();
    for entry in names.iter() {
        let (key, e) = entry?;
        let len = key.iter().position(|b| *b == 0).unwrap_or(key.len());
        let name = String::from_utf8_lossy(&key[..len]).into_owned();
        table.insert(name.clone(), e.slot as u16);
        known.insert(
            e.slot as u16,
            KnownRule {
                name,
                action: action_name(e.action).to_string(),
                hook: "otlp".into(),
                active: e.active != 0,
            },
        );
    }
    let slots = SlotTable::try_from(table)
        .map_err(|e| anyhow!("the pinned name table in {} is damaged: {e}", dir.display()))?;
    Ok((slots, known))
}

fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    for name in all_maps().chain([SOCKOPS_LINK]) {
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

// ------------------------------------------------------------------------------------------
// Shared by the agent and the pinned-state readers

fn set_enabled_in<M: std::borrow::BorrowMut<MapData>>(
    control: &mut Array<M, Control>,
    enabled: bool,
) -> anyhow::Result<()> {
    let mut c = control.get(&0, 0)?;
    c.enabled = enabled as u32;
    control.set(0, c, 0)?;
    Ok(())
}

fn build_stats<C, R, T>(
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
            released: t.released,
            passthrough,
        },
        uprobes: Default::default(),
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
        for (a, b) in t.passthrough.iter_mut().zip(v.passthrough.iter()) {
            *a += b;
        }
    }
    Ok(t)
}

fn name_key(name: &str) -> NameKey {
    let mut key = [0u8; MAX_NAME_LEN];
    let n = name.len().min(MAX_NAME_LEN);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    key
}

fn action_code(action: &str) -> u8 {
    match action {
        "count" => ACTION_COUNT,
        "drop" => ACTION_DROP,
        "sample" => ACTION_SAMPLE,
        "rate_limit" => ACTION_RATE_LIMIT,
        "redact" => ACTION_REDACT,
        _ => ACTION_CAPTURE,
    }
}

fn action_name(code: u8) -> &'static str {
    match code {
        ACTION_COUNT => "count",
        ACTION_DROP => "drop",
        ACTION_SAMPLE => "sample",
        ACTION_RATE_LIMIT => "rate_limit",
        ACTION_REDACT => "redact",
        _ => "capture",
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

/// Mounts bpffs at /sys/fs/bpf when `root` lies under it and it is not mounted yet.
fn ensure_bpffs(root: &Path) -> anyhow::Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if !root.starts_with(bpffs) {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        matches!(
            (f.next(), f.next(), f.next()),
            (_, Some("/sys/fs/bpf"), Some("bpf"))
        )
    });
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(bpffs).ok();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    log::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Swaps the program of the link pinned at `path` (BPF_OBJ_GET, then BPF_LINK_UPDATE: aya 0.14
/// has no wrapper for either on links).
fn link_update(path: &Path, new_prog_fd: i32) -> anyhow::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let get = ObjGetAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET, with its size; `cpath` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET");
    }
    // SAFETY: a new file descriptor the kernel just returned, owned from here on.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let update = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog_fd as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_UPDATE, with its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &update as *const LinkUpdateAttr,
            std::mem::size_of::<LinkUpdateAttr>(),
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_LINK_UPDATE");
    }
    Ok(())
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
