//! Loading, attaching and feeding the kernel programs.
//!
//! An [`Agent`] owns the loaded eBPF object. It installs rule sets into the inactive slot of
//! the double-buffered `RULESETS` map and flips `CONTROL.active` in one write, and reads the
//! per-CPU counters back.
//!
//! Without pinning, dropping the agent switches to pass-through, waits (with no deadline) until
//! no request is held corked, and detaches everything (see [`crate::drain`]). With pinning
//! (`pin_dir`), every map and the sock_ops link are pinned under
//! `<pin_dir>/v<LAYOUT_VERSION>/`: the programs go on filtering after the agent exits or
//! crashes, and the next agent adopts the pinned state (rule set, generation, counters,
//! name→slot table) instead of starting afresh.
//!
//! The pieces: `install` (write a set into the idle slot, then flip), `pins` (pinned state
//! and adoption), `counters` (per-CPU counters summed), `detach` (drain, uninstall, drop).

pub mod cgroups;
mod counters;
mod detach;
mod install;
mod objects;
mod pins;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, SockHash},
    programs::sk_msg::SkMsgLink,
};
use dt_ebpf_common::{Control, DEFAULT_MAX_REQUEST, LAYOUT_VERSION};

use crate::{
    export,
    hooks::{
        self,
        otlp::SockOpsAttachment,
        uprobe::{DropSupport, Probes},
    },
    rules::{self, Compiled, RuleErrors, SlotTable},
    settings, sys,
};

pub(crate) use counters::set_enabled_in;
pub use objects::{Entry, Objects, RingContents};
pub use pins::{
    has_pins, pin_dir, pinned_set_enabled, pinned_set_state, pinned_stats, pinned_stats_of_running,
};

static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dt"));

/// Every map of the object: the OTLP hook's, then the uprobe hook's.
fn all_maps() -> impl Iterator<Item = &'static str> {
    hooks::otlp::MAPS
        .into_iter()
        .chain(hooks::uprobe::MAPS)
        .chain(objects::MAPS)
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
    /// Rule files held in memory, `(label, text)`, that follow the directory's in the rule set:
    /// the remote part an OpAMP server gave (labelled `opamp/NAME.toml`).
    pub remote_rules: Vec<(PathBuf, String)>,
    /// `[ceiling] memory`: bytes of kernel memory dt's maps may take, recorders included; a
    /// rule set whose recorders would go over it is refused.
    pub memory_ceiling: Option<u64>,
    /// `[ceiling] captures_per_second`: captured calls exported per second, at most.
    pub captures_per_second: Option<u64>,
    /// `uprobe_fault_in`: load the uprobe program that faults message pages in.
    pub uprobe_fault_in: bool,
}

impl AgentConfig {
    /// Defaults for a rules directory: the default port, the v2 root, the default size bound,
    /// no pins.
    pub fn new(rules_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            rules_dir: rules_dir.into(),
            ports: vec![settings::DEFAULT_PORT],
            cgroup: None,
            max_request: DEFAULT_MAX_REQUEST,
            pin_root: None,
            capture_endpoint: None,
            remote_rules: Vec::new(),
            memory_ceiling: None,
            captures_per_second: None,
            uprobe_fault_in: false,
        }
    }
}

/// A rule the agent has counted for, active or not.
#[derive(Clone, Debug)]
struct KnownRule {
    name: String,
    action: rules::ActionKind,
    /// Its hooks, in rule set order (one counter for all of them).
    hooks: Vec<rules::Hook>,
    active: bool,
    /// The last generation it was active in (0 for a removed rule of adopted pins, which do not
    /// say): of removed rules, those active longest ago give back their counter slots and their
    /// groups first.
    last_active: u64,
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
    /// Recorders, states and triggers: the maps, and the active set's slots by name.
    objects: Objects,
    active_objects: rules::ObjectSlots,
    /// Recorder slot → name, shared with the flusher.
    recorder_names: export::flush::Names,
    /// Egresses flushed recorders (when there is a capture endpoint).
    flusher: Option<export::flush::Flusher>,
    capture_endpoint: Option<String>,
    /// This agent's id among the process's agents (see `export::own`).
    id: u64,
    /// `[enrich]`: keeps `CGROUP_IDS` up to date (none without a cgroup v2 hierarchy).
    cgroups: Option<cgroups::Tracker>,
    /// Why the rip cord is pulled, when the agent pulled it: `stats`' `disabled_cause` word and
    /// `disabled_reason` text.
    disabled: Option<(&'static str, String)>,
    /// The cost ceiling's last measurement.
    cost: Option<crate::stats::CostStats>,
    /// Bumped by every `enable`.
    enabled_epoch: u64,
    /// `[ceiling] memory`, and what dt's maps take without recorder rings (measured when
    /// loaded).
    memory_ceiling: Option<u64>,
    base_map_bytes: u64,
    /// Kernel memory of the active set's recorder rings.
    ring_bytes: u64,
    /// The rule files the agent started with, as it read them (see
    /// [`Agent::take_started_sources`]).
    started_sources: Vec<(PathBuf, String)>,
}

/// `[enrich]`'s `host.name`: this host's name (its UTS namespace's, as `hostname` prints it;
/// at most 64 bytes), for the kernel to add.
fn write_host_name(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut host: Array<_, dt_ebpf_common::EnrichStr> = Array::try_from(map(ebpf, "ENRICH_HOST")?)?;
    host.set(
        0,
        dt_ebpf_common::EnrichStr::of(name.trim_end().as_bytes()),
        0,
    )?;
    Ok(())
}

/// The removed (inactive) rules among `known`, active longest ago first (then by slot): the
/// order in which they give back their counter slots ([`SlotTable::retired`]) and their groups.
fn retired_slots(known: &BTreeMap<u16, KnownRule>) -> Vec<u16> {
    let mut old: Vec<(u64, u16)> = known
        .iter()
        .filter(|(_, r)| !r.active)
        .map(|(&slot, r)| (r.last_active, slot))
        .collect();
    old.sort_unstable();
    old.into_iter().map(|(_, slot)| slot).collect()
}

/// The names of [`retired_slots`], in its order.
fn retired(known: &BTreeMap<u16, KnownRule>) -> Vec<String> {
    retired_slots(known)
        .into_iter()
        .filter_map(|s| known.get(&s).map(|r| r.name.clone()))
        .collect()
}

/// Ids of the agents of this process.
static NEXT_AGENT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Warns when another dt agent (or a pinned filter whose agent is gone) hooks any of `ports`:
/// on a connection both would hook, one agent's programs take it and the other's counters stay
/// at 0. (Agents on other cgroups may share a port without meeting, so it is not refused.)
/// `adopted`: the pin directory this agent adopts, whose filter is its own.
fn warn_of_other_agents(ports: &[u16], adopted: Option<&Path>) {
    let own = adopted.and_then(|dir| {
        let data = MapData::from_pin(dir.join("PORTS")).ok()?;
        Some(data.info().ok()?.id())
    });
    let (taken, holders) = crate::ripcord::ports_hooked_elsewhere(ports, own);
    if taken.is_empty() {
        return;
    }
    let list = |v: Vec<String>| v.join(", ");
    log::warn!(
        "port{} {} already hooked by another dt agent ({}): on connections both hook, only one \
         agent filters and counts, and the other's counters stay at 0; stop the other (`dt-agent \
         uninstall` with its --socket), or hook other ports or another --cgroup",
        if taken.len() > 1 { "s" } else { "" },
        list(taken.iter().map(u16::to_string).collect()),
        if holders.is_empty() {
            "a pinned filter whose agent is not running".to_string()
        } else {
            format!("pid {}", list(holders.iter().map(u32::to_string).collect()))
        }
    );
}

impl Agent {
    /// The rule files (rules directory, then remote) of the set the agent started with, as it
    /// read and compiled them: the active set's files, once (empty after).
    pub fn take_started_sources(&mut self) -> Vec<(PathBuf, String)> {
        std::mem::take(&mut self.started_sources)
    }

    /// Compiles the rules, loads the programs (adopting pinned state when there is some),
    /// installs the rule set and attaches. On a rule error nothing is loaded, pinned or
    /// attached; on any error, pins this start made are removed again, and pinned state it
    /// would adopt is left as it was.
    pub fn start(cfg: AgentConfig) -> anyhow::Result<Agent> {
        let fresh_pins = cfg
            .pin_root
            .as_deref()
            .map(pin_dir)
            .filter(|d| !d.join("CONTROL").exists());
        let started = Self::start_inner(cfg);
        if started.is_err()
            && let Some(dir) = fresh_pins
            && let Err(e) = pins::remove_pins(&dir)
        {
            log::warn!("removing the pins of a refused start: {e:#}");
        }
        started
    }

    fn start_inner(cfg: AgentConfig) -> anyhow::Result<Agent> {
        if cfg.ports.is_empty() {
            bail!("no ports to hook: give at least one --port");
        }
        settings::check_max_request(cfg.max_request).map_err(|e| anyhow!("max_request: {e}"))?;
        let pins = cfg.pin_root.as_deref().map(pin_dir);
        if let Some(root) = cfg.pin_root.as_deref() {
            pins::refuse_other_layouts(root)?;
        }
        let adopting = pins.as_deref().is_some_and(|d| d.join("CONTROL").exists());
        let (mut slots, known) = if adopting {
            let dir = pins.as_deref().unwrap();
            pins::check_pinned_layout(dir)?;
            let (mut slots, known) = pins::read_names(dir)?;
            slots.objects = Objects::from_pins(dir)?.read_names();
            (slots, known)
        } else {
            (SlotTable::default(), BTreeMap::new())
        };
        let active_objects = slots.objects.clone();
        // Rules the adopted set had removed may give their slots back, as on any install.
        slots.retired = retired(&known);
        let (compiled, started_sources) =
            rules::compile_dir_sources(&cfg.rules_dir, &cfg.remote_rules, &mut slots)?;
        check_recorders(&compiled, cfg.capture_endpoint.as_deref()).map_err(RuleErrors)?;
        let cgroup = match &cfg.cgroup {
            Some(p) => p.clone(),
            None => sys::cgroup2_root()?,
        };
        let cgroup_file = File::open(&cgroup).with_context(|| {
            format!(
                "opening cgroup {} (`cgroup` in the config, or --cgroup)",
                cgroup.display()
            )
        })?;
        if !sys::is_cgroup2(&cgroup_file)
            .with_context(|| format!("reading the file system of {}", cgroup.display()))?
        {
            bail!(
                "{} is not a directory of the cgroup v2 hierarchy (where dt hooks sockets): give \
                 `cgroup` (in the config, or --cgroup) a directory under {} or leave it out for \
                 the whole host",
                cgroup.display(),
                sys::cgroup2_root()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "the cgroup2 mount".to_string())
            );
        }

        sys::bump_memlock();
        // sock_ops makes each hooked socket's send buffer hold a whole request (see
        // `room_for_a_request` in dt-ebpf), up to what the kernel allows.
        if let Some(most) = sys::max_send_buffer()
            && u64::from(cfg.max_request) > most
        {
            log::warn!(
                "max_request is {} bytes, but a socket's send buffer can be made at most {most} \
                 bytes here (2 × net.core.wmem_max): a request larger than that, held by dt, \
                 from a sender that does not wait for buffer space (non-blocking) under \
                 back-pressure could leave cut; raise net.core.wmem_max to at least {} or lower \
                 max_request",
                cfg.max_request,
                cfg.max_request.div_ceil(2)
            );
        }
        warn_of_other_agents(&cfg.ports, pins.as_deref().filter(|_| adopting));
        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&str, PathBuf)> = match &pins {
            Some(dir) => {
                sys::ensure_bpffs(cfg.pin_root.as_deref().unwrap())?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the pin directory {}", dir.display()))?;
                all_maps().map(|m| (m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJ).map_err(|e| {
            let denied = permission_denied(&e);
            let e = anyhow::Error::new(e).context("loading dt's eBPF object");
            if denied {
                e.context(
                    "the kernel refused dt's BPF maps and programs: dt-agent run needs root \
                     (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
                )
            } else {
                e
            }
        })?;
        let probes = Probes::start(
            &mut ebpf,
            cfg.capture_endpoint.clone(),
            cfg.captures_per_second,
            cfg.uprobe_fault_in,
        )?;

        // Read now, written once every check has passed: a refused start changes nothing of
        // a running filter it would adopt.
        let (generation, active_slot, disabled) = if adopting {
            let control: Array<_, Control> = Array::try_from(map(&mut ebpf, "CONTROL")?)?;
            let c = control.get(&0, 0)?;
            // A rip cord pulled before: this agent says why, as recorded.
            let why = (c.enabled == 0).then(|| {
                (
                    counters::cause_adopted(c.off_why),
                    counters::reason_adopted(c.off_why),
                )
            });
            (c.active_generation(), c.active_slot(), why)
        } else {
            (0, 0, None)
        };
        let id = NEXT_AGENT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        export::own::register(id, hooks::otlp::socks_handle(&ebpf)?);
        let objects = Objects::open(&ebpf)?;
        let recorder_names = export::flush::Names::default();
        let flusher = match &cfg.capture_endpoint {
            Some(endpoint) => Some(export::flush::Flusher::start(
                Objects::open(&ebpf)?,
                recorder_names.clone(),
                endpoint
                    .parse()
                    .with_context(|| format!("capture endpoint {endpoint:?}"))?,
            )?),
            None => None,
        };
        let socks = hooks::otlp::take_socks(&mut ebpf)?;
        write_host_name(&mut ebpf)?;
        // Only senders in the hooked cgroup are walked, so the cgroups below it are the ones
        // to know (and in a pod, the host's hierarchy is where --cgroup points, not the pod's
        // own /sys/fs/cgroup).
        let cgroups = match ebpf.take_map("CGROUP_IDS") {
            Some(m) => Some(cgroups::Tracker::start(
                aya::maps::HashMap::try_from(m)?,
                cgroup.clone(),
            )),
            None => None,
        };
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
            objects,
            active_objects,
            recorder_names,
            flusher,
            capture_endpoint: cfg.capture_endpoint.clone(),
            id,
            cgroups,
            disabled,
            cost: None,
            enabled_epoch: 0,
            memory_ceiling: cfg.memory_ceiling,
            base_map_bytes: sys::bpf_map_memory(),
            ring_bytes: 0,
            started_sources,
        };
        if let Some(ceiling) = cfg.memory_ceiling
            && agent.base_map_bytes > ceiling
        {
            bail!(
                "[ceiling] memory = {} KiB is below what dt's maps take without any recorder \
                 ({} KiB)",
                ceiling / 1024,
                agent.base_map_bytes / 1024
            );
        }
        agent.check_memory(&compiled).map_err(RuleErrors)?;
        // uprobe hook: what depends on this kernel (drop) and this agent (capture endpoint).
        agent.probes.check(&compiled.uprobe).map_err(RuleErrors)?;
        if !adopting {
            let _guard = control_lock();
            let mut control: Array<_, Control> = Array::try_from(map(&mut agent.ebpf, "CONTROL")?)?;
            let c = Control {
                active: Control::pack(0, 0),
                enabled: 1,
                layout: LAYOUT_VERSION,
                max_request: 0,
                off_why: 0,
            };
            control.set(0, c, 0)?;
        }
        // The probes attach first in `install`, and a refusal there changes nothing.
        let slots = std::mem::take(&mut agent.slots);
        agent.install(&compiled, slots)?;
        // Only now, every check passed: an adopted filter's size bound and ports change.
        {
            let _guard = control_lock();
            let mut control: Array<_, Control> = Array::try_from(map(&mut agent.ebpf, "CONTROL")?)?;
            let mut c = control.get(&0, 0)?;
            c.max_request = cfg.max_request;
            control.set(0, c, 0)?;
        }
        hooks::otlp::write_ports(&mut agent.ebpf, &cfg.ports)?;
        agent.sk_msg = Some(hooks::otlp::attach_sk_msg(&mut agent.ebpf, &agent.socks)?);
        let pinned_link = agent
            .pins
            .as_ref()
            .map(|d| d.join(hooks::otlp::SOCKOPS_LINK));
        agent.sock_ops = Some(hooks::otlp::attach_sock_ops(
            &mut agent.ebpf,
            pinned_link,
            cgroup_file,
            &cgroup,
        )?);
        log::info!(
            "{}: ports {:?}, cgroup {}, {} rules, generation {}{}",
            if adopting {
                "adopted pinned state"
            } else {
                "attached"
            },
            cfg.ports,
            cgroup.display(),
            agent.active_count(),
            agent.generation,
            match &agent.pins {
                Some(d) => format!(", pinned under {}", d.display()),
                None => String::new(),
            }
        );
        if let Some((_, why)) = &agent.disabled {
            // Adopted with the rip cord pulled: it stays pulled, and every request passes.
            log::warn!("the adopted filter is DISABLED: {why}; `dt-agent enable` turns it on");
        }
        Ok(agent)
    }

    /// Compiles the rule files of `dir` and makes them the active rule set, as a new
    /// generation. On any error the active set stays as it was.
    ///
    /// The in-process form of a directory reload, for embedding and the tests; `dt-agent run`
    /// reloads through [`crate::service::Service`], which also validates pushes first.
    pub fn reload(&mut self, dir: &Path) -> anyhow::Result<u64> {
        let defs = rules::load_dir(dir).map_err(RuleErrors)?;
        let (compiled, slots) = self.compile_defs(&defs)?;
        self.install_compiled(&compiled, slots)?;
        Ok(self.generation)
    }

    /// Compiles rules against this agent's counter slots, without installing anything.
    /// Returns the compiled set and the slot table it needs.
    pub fn compile_defs(&self, defs: &rules::RuleSetDef) -> anyhow::Result<(Compiled, SlotTable)> {
        let mut slots = self.slots.clone();
        // Removed rules' slots may be taken back when every slot is in use.
        slots.retired = retired(&self.known);
        slots.reclaimed.clear();
        let compiled = rules::compile(defs, &mut slots).map_err(RuleErrors)?;
        self.probes.check(&compiled.uprobe).map_err(RuleErrors)?;
        check_recorders(&compiled, self.capture_endpoint.as_deref()).map_err(RuleErrors)?;
        self.check_memory(&compiled).map_err(RuleErrors)?;
        Ok((compiled, slots))
    }

    /// `[ceiling] memory`: the set's recorder rings and dt's other maps must fit under it.
    fn check_memory(&self, compiled: &Compiled) -> Result<(), Vec<rules::Diagnostic>> {
        let Some(ceiling) = self.memory_ceiling else {
            return Ok(());
        };
        let rings: u64 = compiled
            .recorders
            .iter()
            .map(|r| objects::ring_memory(r.size))
            .sum();
        if self.base_map_bytes + rings <= ceiling {
            return Ok(());
        }
        recorders_refused(compiled, |r| {
            format!(
                "recorder \"{}\": the rule set's recorders take {} KiB of kernel memory, which \
                 with dt's other maps ({} KiB) is over the memory ceiling of {} KiB ([ceiling] \
                 memory)",
                r.name,
                rings / 1024,
                self.base_map_bytes / 1024,
                ceiling / 1024
            )
        })
    }

    /// Kernel memory of dt's maps now: those this process holds and the active recorders'
    /// rings.
    pub fn map_bytes(&self) -> u64 {
        sys::bpf_map_memory() + self.ring_bytes
    }

    /// Everything [`compile_defs`](Self::compile_defs) checks, plus that every probe the rules
    /// use can be attached (it is attached and detached again). Nothing changes.
    pub fn check_defs(&mut self, defs: &rules::RuleSetDef) -> anyhow::Result<()> {
        let (compiled, _) = self.compile_defs(defs)?;
        self.probes
            .trial(&mut self.ebpf, &compiled.uprobe)
            .map_err(RuleErrors)?;
        Ok(())
    }

    /// Whether this kernel lets a uprobe skip a call (what `drop` on a uprobe hook needs), as
    /// found when the agent started.
    pub fn uprobe_drop_support(&self) -> &DropSupport {
        self.probes.drop_support()
    }

    /// Makes a compiled set (from [`compile_defs`](Self::compile_defs)) the active one, as a
    /// new generation.
    pub fn install_compiled(
        &mut self,
        compiled: &Compiled,
        slots: SlotTable,
    ) -> anyhow::Result<()> {
        self.install(compiled, slots)
    }

    /// The active rules, in evaluation order.
    pub fn active_rules(&self) -> &[rules::CompiledRule] {
        &self.active
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

    /// What [`crate::service::Service::flush`] needs to egress the named recorders: the
    /// flusher, and their slots. Unknown names are an error naming them.
    pub fn flush_request(
        &self,
        names: &[String],
    ) -> anyhow::Result<(export::flush::Requester, Vec<u8>)> {
        let flusher = self.flusher.as_ref().ok_or_else(|| {
            anyhow!("no capture_endpoint is configured: there is nowhere to flush recorders to")
        })?;
        let mut slots = Vec::new();
        let mut unknown = Vec::new();
        for n in names {
            match self.active_objects.recorders.get(n) {
                Some(&s) => slots.push(s),
                None => unknown.push(n.as_str()),
            }
        }
        if !unknown.is_empty() {
            let known: Vec<&str> = self
                .active_objects
                .recorders
                .keys()
                .map(String::as_str)
                .collect();
            bail!(
                "no recorder named {} in the active rule set (its recorders: {})",
                unknown.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        Ok((flusher.requester(), slots))
    }

    /// Turns state `name` on (for `duration`, else its own duration) or off.
    pub fn set_state(
        &mut self,
        name: &str,
        on: bool,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<()> {
        set_state_named(
            &mut self.objects,
            &self.active_objects.states,
            name,
            on,
            duration,
        )
    }

    pub(crate) fn active_count(&self) -> usize {
        self.known.values().filter(|r| r.active).count()
    }
}

/// Turns state `name` of `states` (names to slots) on (for `duration`, else its own duration)
/// or off: for the running agent, and on the pins with none.
fn set_state_named(
    objects: &mut Objects,
    states: &BTreeMap<String, u8>,
    name: &str,
    on: bool,
    duration: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let Some(&slot) = states.get(name) else {
        let known: Vec<&str> = states.keys().map(String::as_str).collect();
        bail!(
            "no state named {name} in the active rule set (its states: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let until = if on {
        let ns = match duration {
            Some(d) => d.as_nanos() as u64,
            None => objects.state_duration(slot),
        };
        crate::drain::monotonic_ns() + ns
    } else {
        0
    };
    objects.set_state(slot, until)
}

/// Recorders egress to the capture endpoint: a rule set with one needs it.
fn check_recorders(
    compiled: &Compiled,
    capture_endpoint: Option<&str>,
) -> Result<(), Vec<rules::Diagnostic>> {
    if capture_endpoint.is_some() {
        return Ok(());
    }
    recorders_refused(compiled, |r| {
        format!(
            "recorder \"{}\" needs a capture endpoint (`capture_endpoint` in the agent's \
             config, or `run --capture-endpoint URL`): flushed records are posted there",
            r.name
        )
    })
}

/// Every recorder of the set refused at its position, with `message` (`Ok` when it has none).
fn recorders_refused(
    compiled: &Compiled,
    message: impl Fn(&rules::CompiledRecorder) -> String,
) -> Result<(), Vec<rules::Diagnostic>> {
    let diags: Vec<_> = compiled
        .recorders
        .iter()
        .map(|r| rules::Diagnostic::new(&r.file, r.pos, message(r)))
        .collect();
    if diags.is_empty() { Ok(()) } else { Err(diags) }
}

/// Every read-modify-write of the `CONTROL` value in this process (the rip cord, a rule set's
/// flip, the size bound) holds this: the control socket pulls the cord on the pins while the
/// agent that adopts them is still starting, and each writes the whole value back.
static CONTROL_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn control_lock() -> std::sync::MutexGuard<'static, ()> {
    CONTROL_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a aya::maps::Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Whether `e`, or an error it comes from, is the kernel's EPERM or EACCES.
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        at = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, active: bool, last_active: u64) -> KnownRule {
        KnownRule {
            name: name.into(),
            action: rules::ActionKind::Count,
            hooks: vec![rules::Hook::Otlp],
            active,
            last_active,
        }
    }

    /// Removed rules give back their slots (and groups) the one active longest ago first, then
    /// the lowest slot: not the lowest slot first, which took from rules that come back every
    /// few changes while names never seen again kept theirs.
    #[test]
    fn removed_rules_go_the_longest_inactive_first() {
        let known: BTreeMap<u16, KnownRule> = [
            (0, rule("comes-back", false, 40)),
            (1, rule("active", true, 41)),
            (2, rule("one-off-old", false, 3)),
            (3, rule("adopted-removed", false, 0)),
            (4, rule("one-off-newer", false, 20)),
            (5, rule("also-old", false, 3)),
        ]
        .into();
        assert_eq!(retired_slots(&known), [3, 2, 5, 4, 0]);
        assert_eq!(
            retired(&known),
            [
                "adopted-removed",
                "one-off-old",
                "also-old",
                "one-off-newer",
                "comes-back"
            ]
        );
    }
}
