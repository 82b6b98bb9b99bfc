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
//! **Capture.** `capture` rules send matching calls through the `PROBE_EVENTS` ring buffer. The
//! [`Exporter`] thread drains it and posts batches of OTLP log records (ExportLogsServiceRequest,
//! HTTP/protobuf) to the configured `capture_endpoint`. While a post is in flight the ring buffer
//! is not read; when it fills, the kernel counts each refused call (`capture_lost`).

use std::{
    collections::HashMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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
    ARG_NONE, AddrRange, CommKey, ENTRY_STATIC_SERVICE, EV_TRUNCATED, EV_UNREADABLE, MAX_FAMILY,
    MAX_PROBE_ENTRIES, PROBE_MSG_LEN, ProbeEntry, ProbeEvent, ProbeRuleSet, ProbeTotals, SEV_CONST,
    SEV_DIRECT, SEV_TABLE, SevPair,
};

use crate::rules::{
    CompiledProbe, Diagnostic, ProbeKind, SYSLOG_SEVERITIES, SeverityMap, SeveritySource, UprobeSet,
};
use crate::stats::UprobeStats;

/// The uprobe program.
pub const PROGRAM: &str = "dt_uprobe";
/// The program that is only loaded, to learn whether a uprobe may skip a call.
const SKIP_PROGRAM: &str = "dt_uprobe_skip";
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
/// Why `drop` is refused on uprobe hooks on kernels like this one.
pub const NO_SKIP: &str = "this kernel does not let a uprobe program skip a call \
                           (the verifier refuses writing registers)";

/// The functions of `preset = "syslog"`, with the arguments each is read from: (symbol, message
/// `char *`, the `char *` a `"%s"` message prints, the `va_list` whose first argument it prints).
/// The priority is argument 0 of all four.
const SYSLOG_FAMILY: [(&str, u8, u8, u8); MAX_FAMILY] = [
    ("syslog", 1, 2, ARG_NONE),
    ("__syslog_chk", 2, 3, ARG_NONE),
    ("vsyslog", 1, ARG_NONE, 2),
    ("__vsyslog_chk", 2, ARG_NONE, 3),
];

// ------------------------------------------------------------------------------------------
// Can a uprobe skip a call here?

/// Whether this kernel lets a uprobe program skip the probed call, found at start-up by loading
/// `dt_uprobe_skip` (which writes the registers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropSupport {
    pub supported: bool,
    /// What the kernel said.
    pub detail: String,
}

/// Loads `dt_uprobe_skip` (never attached) and unloads it again.
pub fn detect_drop_support(ebpf: &mut Ebpf) -> DropSupport {
    let prog: Option<&mut UProbe> = ebpf
        .program_mut(SKIP_PROGRAM)
        .and_then(|p| p.try_into().ok());
    let Some(prog) = prog else {
        return DropSupport {
            supported: false,
            detail: format!("program {SKIP_PROGRAM} is missing from the eBPF object"),
        };
    };
    match prog.load() {
        Ok(()) => {
            let _ = prog.unload();
            DropSupport {
                supported: true,
                detail: "the verifier accepts a uprobe program that writes registers".into(),
            }
        }
        Err(e) => {
            let text = format!("{e}");
            // The verifier's reason is its log's last complaint, e.g. "invalid bpf_context
            // access off=152 size=8"; else the syscall's error.
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("invalid "))
                .or_else(|| text.split(". Verifier output").next())
                .unwrap_or("")
                .to_string();
            DropSupport {
                supported: false,
                detail: format!(
                    "the verifier refused a uprobe program that writes registers: {line}"
                ),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Finding binaries and functions

/// The file a probe's `binary` names: an absolute path as is, or a library name (`"libc"`,
/// `"libssl.so.3"`) as the dynamic linker finds it: first in the ld.so cache (`ldconfig -p`,
/// entries of this machine's architecture, in cache order), then in the standard directories.
/// A name without `.so` matches `NAME.so` and `NAME.so.*`.
pub fn resolve_binary(name: &str) -> Result<PathBuf, String> {
    if name.starts_with('/') {
        let path = Path::new(name);
        return match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(path.to_path_buf()),
            Ok(_) => Err(format!("binary {name} is not a file")),
            Err(e) => Err(format!("binary {name}: {e}")),
        };
    }
    if let Some(path) = ld_cache()
        .into_iter()
        .find(|(soname, path)| library_matches(name, soname) && is_elf(path))
        .map(|(_, path)| path)
    {
        return Ok(path);
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in standard_lib_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut here: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|f| library_matches(name, f))
            })
            .map(|e| e.path())
            .filter(|p| is_elf(p))
            .collect();
        // The versioned name (`libc.so.6`, what programs load) before the development link.
        here.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        found.extend(here);
        if !found.is_empty() {
            break;
        }
    }
    found.into_iter().next().ok_or_else(|| {
        format!(
            "no library \"{name}\" in the ld.so cache or the standard library directories; \
             give binary as an absolute path"
        )
    })
}

/// Whether a library file name answers to `name`.
fn library_matches(name: &str, file: &str) -> bool {
    if file == name {
        return true;
    }
    if name.contains(".so") {
        return false;
    }
    let Some(rest) = file.strip_prefix(name) else {
        return false;
    };
    rest == ".so" || rest.starts_with(".so.")
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// `(soname, path)` of every ld.so cache entry of this architecture, in cache order.
fn ld_cache() -> Vec<(String, PathBuf)> {
    let arch_flag = match std::env::consts::ARCH {
        "x86_64" => Some("x86-64"),
        "aarch64" => Some("AArch64"),
        _ => None,
    };
    let output = ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
        .iter()
        .find_map(|cmd| std::process::Command::new(cmd).arg("-p").output().ok())
        .filter(|o| o.status.success());
    let Some(output) = output else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&output.stdout);
    parse_ld_cache(&text, arch_flag)
}

/// Parses `ldconfig -p` lines: `\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6`.
fn parse_ld_cache(text: &str, arch_flag: Option<&str>) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.trim().split_once(" => ")?;
            let (soname, flags) = left.split_once(" (")?;
            let flags = flags.trim_end_matches(')');
            if let Some(arch) = arch_flag
                && !flags.split(',').any(|f| f.trim() == arch)
            {
                return None;
            }
            Some((soname.trim().to_string(), PathBuf::from(path.trim())))
        })
        .collect()
}

fn standard_lib_dirs() -> Vec<PathBuf> {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{multiarch}"),
        format!("/usr/lib/{multiarch}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

/// A function symbol of an ELF file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FnSym {
    /// ELF virtual address.
    pub addr: u64,
    /// Size in bytes (at least 1).
    pub size: u64,
    /// Offset in the file (where a uprobe is placed).
    pub offset: u64,
}

/// The defined functions named `names` in the ELF file at `path`, from its dynamic symbol table
/// first, then its static one.
pub fn elf_functions(path: &Path, names: &[&str]) -> Result<HashMap<String, FnSym>, String> {
    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
    let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file = object::File::parse(&*data)
        .map_err(|e| format!("{} is not an ELF file dt can read: {e}", path.display()))?;
    let mut out = HashMap::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if !sym.is_definition() || sym.kind() != SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else {
            continue;
        };
        if !names.contains(&name) || out.contains_key(name) {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        let Some(offset) = sym
            .address()
            .checked_sub(section.address())
            .map(|o| o + file_offset)
        else {
            continue;
        };
        out.insert(
            name.to_string(),
            FnSym {
                addr: sym.address(),
                size: sym.size().max(1),
                offset,
            },
        );
    }
    Ok(out)
}

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

/// Where a captured call came from, for the exporter (by entry id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub probe: String,
    pub symbol: String,
    pub binary: PathBuf,
    /// The probe's `service`; none: the process name.
    pub service: Option<String>,
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
    _link: UProbeLink,
}

/// The uprobe hook's state in the agent.
pub struct Probes {
    support: DropSupport,
    capture_endpoint: Option<String>,
    attached: Vec<Attached>,
    /// Where the next entry id is looked for (ids are reused as late as possible, so that a
    /// captured call still in the ring buffer is not credited to the next user of its id).
    next_id: u32,
    meta: Arc<Mutex<HashMap<u32, EntryMeta>>>,
    exporter: Option<Exporter>,
}

impl Probes {
    /// Loads the uprobe program, finds out whether a uprobe may skip a call, and starts the
    /// capture exporter when there is an endpoint.
    pub fn start(ebpf: &mut Ebpf, capture_endpoint: Option<String>) -> anyhow::Result<Probes> {
        let support = detect_drop_support(ebpf);
        log::info!(
            "uprobe drop: {} ({})",
            if support.supported {
                "supported"
            } else {
                "not supported"
            },
            support.detail
        );
        let prog: &mut UProbe = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
            .try_into()?;
        prog.load().context("loading the uprobe program")?;
        let meta = Arc::new(Mutex::new(HashMap::new()));
        let exporter = match &capture_endpoint {
            Some(url) => {
                let uri: hyper::Uri = url
                    .parse()
                    .with_context(|| format!("capture_endpoint {url:?}"))?;
                crate::otlp_http::target(&uri, "capture endpoint")?;
                let ring = RingBuf::try_from(
                    ebpf.take_map("PROBE_EVENTS")
                        .ok_or_else(|| anyhow!("map PROBE_EVENTS missing"))?,
                )?;
                log::info!("captured uprobe calls are exported to {url}");
                Some(Exporter::start(ring, uri, meta.clone())?)
            }
            None => None,
        };
        Ok(Probes {
            support,
            capture_endpoint,
            attached: Vec::new(),
            next_id: 0,
            meta,
            exporter,
        })
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
            self.attached.retain(|a| !new_ids.contains(&a.id));
            return Err(diags);
        }
        Ok(ready)
    }

    /// Attaches and detaches again what [`prepare`](Self::prepare) would attach: the proof that
    /// every probe of the set can be attached, without changing anything.
    pub fn trial(&mut self, ebpf: &mut Ebpf, set: &UprobeSet) -> Result<(), Vec<Diagnostic>> {
        let before: Vec<u32> = self.attached.iter().map(|a| a.id).collect();
        self.prepare(ebpf, set)?;
        self.attached.retain(|a| before.contains(&a.id));
        Ok(())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, key: &AttachKey) -> Result<u32, String> {
        let id = self
            .free_id()
            .ok_or_else(|| format!("all {MAX_PROBE_ENTRIES} uprobe attachments are in use"))?;
        let prog: &mut UProbe = ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| format!("program {PROGRAM} missing"))?;
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
            _link: link,
        });
        self.next_id = (id + 1) % MAX_PROBE_ENTRIES;
        Ok(id)
    }

    fn free_id(&self) -> Option<u32> {
        (0..MAX_PROBE_ENTRIES)
            .map(|i| (self.next_id + i) % MAX_PROBE_ENTRIES)
            .find(|id| self.attached.iter().all(|a| a.id != *id))
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
        let before = self.attached.len();
        self.attached
            .retain(|a| ready.iter().any(|r| r.key == a.key));
        let detached = before - self.attached.len();
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
        s.drop_supported = self.support.supported;
        if let Some(x) = &self.exporter {
            s.exported = x.counters.exported.load(Ordering::Relaxed);
            s.export_failed = x.counters.failed.load(Ordering::Relaxed);
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

// ------------------------------------------------------------------------------------------
// Plans: a rule set's probes resolved on this host

struct EntryPlan {
    symbol: String,
    sym: FnSym,
    msg_arg: u8,
    str_arg: u8,
    va_arg: u8,
}

struct ProbePlan<'a> {
    index: usize,
    probe: &'a CompiledProbe,
    path: PathBuf,
    entries: Vec<EntryPlan>,
    family: [AddrRange; MAX_FAMILY],
}

/// Resolves every probe of `set`: its file, its functions, its process.
fn plan(set: &UprobeSet) -> Result<Vec<ProbePlan<'_>>, Vec<Diagnostic>> {
    let mut plans = Vec::new();
    let mut diags = Vec::new();
    for (index, probe) in set.probes.iter().enumerate() {
        let def = &probe.def;
        let name = &def.name.value;
        if let Some(pid) = &def.pid
            && !Path::new(&format!("/proc/{}", pid.value)).exists()
        {
            diags.push(Diagnostic::new(
                &def.file,
                pid.pos,
                format!("probe \"{name}\": there is no process {}", pid.value),
            ));
            continue;
        }
        let path = match resolve_binary(&def.binary.value) {
            Ok(p) => p,
            Err(e) => {
                diags.push(Diagnostic::new(
                    &def.file,
                    def.binary.pos,
                    format!("probe \"{name}\": {e}"),
                ));
                continue;
            }
        };
        let wanted: Vec<(&str, u8, u8, u8)> = match &def.kind {
            ProbeKind::Syslog => SYSLOG_FAMILY.to_vec(),
            ProbeKind::Function {
                symbol,
                message_arg,
                ..
            } => vec![(symbol.value.as_str(), *message_arg, ARG_NONE, ARG_NONE)],
        };
        let names: Vec<&str> = wanted.iter().map(|w| w.0).collect();
        let syms = match elf_functions(&path, &names) {
            Ok(s) => s,
            Err(e) => {
                diags.push(Diagnostic::new(
                    &def.file,
                    def.binary.pos,
                    format!("probe \"{name}\": {e}"),
                ));
                continue;
            }
        };
        let entries: Vec<EntryPlan> = wanted
            .iter()
            .filter_map(|(symbol, msg_arg, str_arg, va_arg)| {
                syms.get(*symbol).map(|sym| EntryPlan {
                    symbol: symbol.to_string(),
                    sym: *sym,
                    msg_arg: *msg_arg,
                    str_arg: *str_arg,
                    va_arg: *va_arg,
                })
            })
            .collect();
        if entries.is_empty() {
            let (pos, message) = match &def.kind {
                ProbeKind::Syslog => (
                    def.pos,
                    format!(
                        "probe \"{name}\": {} defines none of {}",
                        path.display(),
                        names.join(", ")
                    ),
                ),
                ProbeKind::Function { symbol, .. } => (
                    symbol.pos,
                    format!(
                        "probe \"{name}\": no function \"{}\" in {} (neither in its dynamic nor \
                         its static symbol table)",
                        symbol.value,
                        path.display()
                    ),
                ),
            };
            diags.push(Diagnostic::new(&def.file, pos, message));
            continue;
        }
        let mut family = [AddrRange::default(); MAX_FAMILY];
        for (r, e) in family.iter_mut().zip(&entries) {
            *r = AddrRange {
                start: e.sym.addr,
                end: e.sym.addr + e.sym.size,
            };
        }
        plans.push(ProbePlan {
            index,
            probe,
            path,
            entries,
            family,
        });
    }
    if diags.is_empty() {
        Ok(plans)
    } else {
        Err(diags)
    }
}

/// The table entry of one function of a probe (generation 0).
fn table_entry(p: &ProbePlan<'_>, e: &EntryPlan) -> ProbeEntry {
    let mut entry = ProbeEntry {
        sym_addr: e.sym.addr,
        ranges: p.family,
        probe: p.index as u8,
        msg_arg: e.msg_arg,
        str_arg: e.str_arg,
        va_arg: e.va_arg,
        sev_arg: ARG_NONE,
        ..ProbeEntry::default()
    };
    if p.probe.def.service.is_some() {
        entry.flags |= ENTRY_STATIC_SERVICE;
        entry.service_bits = p.probe.service_bits;
    }
    let syslog_table = |entry: &mut ProbeEntry| {
        entry.sev_mode = SEV_TABLE;
        entry.sev_mask = 7;
        for (i, sev) in SYSLOG_SEVERITIES.iter().enumerate() {
            entry.pairs[i] = SevPair {
                value: i as i32,
                severity: *sev,
                _pad: [0; 3],
            };
        }
        entry.n_pairs = SYSLOG_SEVERITIES.len() as u8;
    };
    match &p.probe.def.kind {
        ProbeKind::Syslog => {
            entry.sev_arg = 0;
            syslog_table(&mut entry);
        }
        ProbeKind::Function { severity, .. } => match severity {
            SeveritySource::Const(n) => {
                entry.sev_mode = SEV_CONST;
                entry.sev_default = *n;
            }
            SeveritySource::Arg { index, map } => {
                entry.sev_arg = *index;
                match map {
                    SeverityMap::Otlp => entry.sev_mode = SEV_DIRECT,
                    SeverityMap::Syslog => syslog_table(&mut entry),
                    SeverityMap::Table(pairs) => {
                        entry.sev_mode = SEV_TABLE;
                        for (slot, (value, sev)) in entry.pairs.iter_mut().zip(pairs) {
                            *slot = SevPair {
                                value: *value,
                                severity: *sev,
                                _pad: [0; 3],
                            };
                        }
                        entry.n_pairs = pairs.len().min(entry.pairs.len()) as u8;
                    }
                }
            }
        },
    }
    entry
}

// ------------------------------------------------------------------------------------------
// Capture: the ring buffer to OTLP log records

/// Most records in one export request.
const BATCH: usize = 512;
/// Bound on one post: connecting, sending, and reading the answer.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on each of the last posts while the agent stops.
const FINAL_POST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most of a collector's answer that is read.

#[derive(Default)]
struct ExportCounters {
    exported: AtomicU64,
    failed: AtomicU64,
}

/// The capture exporter: a thread draining `PROBE_EVENTS` and posting OTLP log records.
pub struct Exporter {
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<ExportCounters>,
}

impl Exporter {
    fn start(
        ring: RingBuf<MapData>,
        endpoint: hyper::Uri,
        meta: Arc<Mutex<HashMap<u32, EntryMeta>>>,
    ) -> anyhow::Result<Exporter> {
        let counters = Arc::new(ExportCounters::default());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("dt-capture".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        log::error!("capture exporter: no runtime: {e}");
                        return;
                    }
                };
                if let Err(e) = rt.block_on(export_loop(ring, endpoint, meta, c, rx)) {
                    log::error!("capture exporter stopped: {e:#}");
                }
            })
            .context("starting the capture exporter")?;
        Ok(Exporter {
            shutdown: Some(tx),
            thread: Some(thread),
            counters,
        })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn export_loop(
    ring: RingBuf<MapData>,
    endpoint: hyper::Uri,
    meta: Arc<Mutex<HashMap<u32, EntryMeta>>>,
    counters: Arc<ExportCounters>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the ring buffer owns its map's file descriptor, which stays open and the same
    // for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow!("polling the capture ring buffer: {e}"))?;
    let mut batch: Vec<ProbeEvent> = Vec::with_capacity(BATCH);
    let mut exp = Export {
        endpoint: &endpoint,
        meta: &meta,
        counters: &counters,
        stop: stop.clone(),
    };
    let mut stopped = stop;
    loop {
        let stopping = tokio::select! {
            _ = stopped.wait_for(|s| *s) => true,
            ready = fd.readable_mut() => {
                let mut guard = ready.context("waiting on the capture ring buffer")?;
                guard.clear_ready();
                false
            }
        };
        // Drain what is there, posting whenever a batch is full. While a post is in flight the
        // ring buffer is not read: if it fills, the kernel counts the calls it refuses.
        loop {
            let ev = fd.get_mut().next().and_then(|item| parse_event(&item));
            let Some(ev) = ev else {
                break;
            };
            batch.push(ev);
            if batch.len() >= BATCH {
                exp.post_batch(&mut batch, stopping).await;
            }
        }
        if !batch.is_empty() {
            exp.post_batch(&mut batch, stopping).await;
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Where and how batches are posted.
struct Export<'a> {
    endpoint: &'a hyper::Uri,
    meta: &'a Arc<Mutex<HashMap<u32, EntryMeta>>>,
    counters: &'a ExportCounters,
    /// Set when the agent stops: a post in flight is abandoned.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Export<'_> {
    /// Posts `batch` (and empties it). While running, a post takes up to [`POST_TIMEOUT`] unless
    /// the agent stops; the last posts, when stopping, take up to [`FINAL_POST_TIMEOUT`].
    async fn post_batch(&mut self, batch: &mut Vec<ProbeEvent>, stopping: bool) {
        let n = batch.len() as u64;
        let request = {
            let meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            logs_request(batch, &meta, realtime_offset_ns(), unix_nanos_now())
        };
        batch.clear();
        use prost::Message as _;
        let body = request.encode_to_vec();
        let endpoint = self.endpoint;
        let result = if stopping {
            tokio::time::timeout(FINAL_POST_TIMEOUT, post(endpoint, body))
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer within {FINAL_POST_TIMEOUT:?}")))
        } else {
            tokio::select! {
                r = tokio::time::timeout(POST_TIMEOUT, post(endpoint, body)) => {
                    r.unwrap_or_else(|_| Err(anyhow!("no answer within {POST_TIMEOUT:?}")))
                }
                _ = self.stop.wait_for(|s| *s) => Err(anyhow!("the agent is stopping")),
            }
        };
        let counters = self.counters;
        match result {
            Ok(()) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let before = counters.failed.fetch_add(n, Ordering::Relaxed);
                // The first failure, then one line per 1000 lost records.
                if before == 0 || (before + n) / 1000 > before / 1000 {
                    log::warn!(
                        "exporting {n} captured calls to {endpoint} failed: {e:#} ({} so far)",
                        before + n
                    );
                }
            }
        }
    }
}

fn parse_event(bytes: &[u8]) -> Option<ProbeEvent> {
    if bytes.len() < std::mem::size_of::<ProbeEvent>() {
        return None;
    }
    // SAFETY: the ring buffer record is at least one ProbeEvent, a plain-old-data type; the
    // read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const ProbeEvent) })
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, in nanoseconds: what turns `bpf_ktime_get_ns()` into Unix
/// time.
fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write to.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ERROR`, `ERROR2`, ... for SeverityNumbers 1-24; empty for 0.
pub fn severity_text(n: u8) -> String {
    const NAMES: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    if n == 0 || n > 24 {
        return String::new();
    }
    let level = NAMES[usize::from((n - 1) / 4)];
    match (n - 1) % 4 {
        0 => level.to_string(),
        k => format!("{level}{}", k + 1),
    }
}

fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// The captured calls as one export request: a ResourceLogs per (service, process) with
/// `service.name` and `process.pid`, a ScopeLogs `dt.uprobe`, and per call a LogRecord: time
/// (the call's), observed time (the export's), severity number and text, the message as the
/// string body, and attributes `dt.probe`, `code.function.name`, `thread.id`, `thread.name`,
/// plus `dt.message.truncated` (true) when the message was cut at the bound or
/// `dt.message.unreadable` (true) when it could not be read.
pub fn logs_request(
    events: &[ProbeEvent],
    meta: &HashMap<u32, EntryMeta>,
    realtime_offset_ns: i128,
    observed_unix_nanos: u64,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value::Value,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    let kv = |key: &str, value: Value| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let mut groups: Vec<((String, u32), Vec<LogRecord>)> = Vec::new();
    for ev in events {
        let m = meta.get(&ev.entry);
        let comm = c_string(&ev.comm);
        let service = m
            .and_then(|m| m.service.clone())
            .unwrap_or_else(|| comm.clone());
        let pid = (ev.pid_tgid >> 32) as u32;
        let tid = ev.pid_tgid as u32;
        let msg_len = (ev.msg_len as usize).min(PROBE_MSG_LEN - 1);
        let mut attributes = vec![
            kv(
                "dt.probe",
                Value::StringValue(m.map(|m| m.probe.clone()).unwrap_or_default()),
            ),
            kv(
                "code.function.name",
                Value::StringValue(m.map(|m| m.symbol.clone()).unwrap_or_default()),
            ),
            kv("thread.id", Value::IntValue(tid as i64)),
            kv("thread.name", Value::StringValue(comm)),
        ];
        if ev.flags & EV_TRUNCATED != 0 {
            attributes.push(kv("dt.message.truncated", Value::BoolValue(true)));
        }
        if ev.flags & EV_UNREADABLE != 0 {
            attributes.push(kv("dt.message.unreadable", Value::BoolValue(true)));
        }
        let time = (ev.time_ns as i128 + realtime_offset_ns).clamp(0, u64::MAX as i128) as u64;
        let record = LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: observed_unix_nanos,
            severity_number: ev.severity as i32,
            severity_text: severity_text(ev.severity),
            body: Some(AnyValue {
                value: Some(Value::StringValue(
                    String::from_utf8_lossy(&ev.msg[..msg_len]).into_owned(),
                )),
            }),
            attributes,
            ..Default::default()
        };
        let key = (service, pid);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, records)) => records.push(record),
            None => groups.push((key, vec![record])),
        }
    }
    ExportLogsServiceRequest {
        resource_logs: groups
            .into_iter()
            .map(|((service, pid), log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue(service)),
                        kv("process.pid", Value::IntValue(pid as i64)),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "dt.uprobe".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Posts one protobuf body on a fresh connection; errors unless the answer is 2xx.
async fn post(endpoint: &hyper::Uri, body: Vec<u8>) -> anyhow::Result<()> {
    crate::otlp_http::post_protobuf(endpoint, body, "capture endpoint")
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_ebpf_common::uprobe::COMM_LEN;

    #[test]
    fn ld_cache_lines() {
        let text = "1234 libs found in cache `/etc/ld.so.cache'\n\
                    \tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n\
                    \tlibc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6\n\
                    \tlibz.so.1 (libc6,x86-64, OS ABI: Linux 3.2.0) => \
                    /lib/x86_64-linux-gnu/libz.so.1\n";
        let x86 = parse_ld_cache(text, Some("x86-64"));
        assert_eq!(
            x86,
            vec![
                ("libc.so.6".into(), "/lib/x86_64-linux-gnu/libc.so.6".into()),
                ("libz.so.1".into(), "/lib/x86_64-linux-gnu/libz.so.1".into()),
            ]
        );
        assert_eq!(parse_ld_cache(text, None).len(), 3);
    }

    #[test]
    fn library_names() {
        assert!(library_matches("libc", "libc.so.6"));
        assert!(library_matches("libc", "libc.so"));
        assert!(!library_matches("libc", "libcap.so.2"));
        assert!(!library_matches("libc", "libc_malloc_debug.so.0"));
        assert!(library_matches("libc.so.6", "libc.so.6"));
        assert!(!library_matches("libc.so", "libc.so.6"));
    }

    #[test]
    fn libc_resolves_like_the_dynamic_linker() {
        let path = resolve_binary("libc").expect("libc");
        assert!(is_elf(&path), "{}", path.display());
        assert!(
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libc.so")),
            "{}",
            path.display()
        );
        let syms = elf_functions(&path, &["syslog", "vsyslog", "__syslog_chk"]).unwrap();
        assert!(syms.contains_key("syslog") && syms.contains_key("vsyslog"));
        assert!(syms.values().all(|s| s.size > 1 && s.offset > 0));
        let e = resolve_binary("libno-such-library-dt").unwrap_err();
        assert!(e.contains("no library \"libno-such-library-dt\""), "{e}");
        let e = resolve_binary("/no/such/file").unwrap_err();
        assert!(e.contains("/no/such/file"), "{e}");
    }

    #[test]
    fn severity_texts() {
        assert_eq!(severity_text(0), "");
        assert_eq!(severity_text(5), "DEBUG");
        assert_eq!(severity_text(17), "ERROR");
        assert_eq!(severity_text(18), "ERROR2");
        assert_eq!(severity_text(24), "FATAL4");
    }

    #[test]
    fn captured_calls_become_log_records() {
        let mut ev = ProbeEvent {
            time_ns: 1_000,
            pid_tgid: (42u64 << 32) | 43,
            entry: 7,
            msg_len: 5,
            severity: 17,
            flags: 0,
            comm: [0; COMM_LEN],
            msg: [0; PROBE_MSG_LEN],
        };
        ev.comm[..3].copy_from_slice(b"app");
        ev.msg[..5].copy_from_slice(b"hello");
        let mut other = ev;
        other.pid_tgid = 99 << 32;
        other.flags = EV_TRUNCATED;
        let meta: HashMap<u32, EntryMeta> = [(
            7,
            EntryMeta {
                probe: "syslog".into(),
                symbol: "__syslog_chk".into(),
                binary: "/lib/libc.so.6".into(),
                service: None,
            },
        )]
        .into();
        let req = logs_request(&[ev, other, ev], &meta, 5_000, 9);
        assert_eq!(req.resource_logs.len(), 2);
        let rl = &req.resource_logs[0];
        let records = &rl.scope_logs[0].log_records;
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].time_unix_nano, 6_000);
        assert_eq!(records[0].observed_time_unix_nano, 9);
        assert_eq!(records[0].severity_number, 17);
        assert_eq!(records[0].severity_text, "ERROR");
        assert_eq!(
            format!("{:?}", records[0].body),
            format!(
                "{:?}",
                Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            "hello".into()
                        )
                    )
                })
            )
        );
        let keys: Vec<&str> = records[0]
            .attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert_eq!(
            keys,
            vec!["dt.probe", "code.function.name", "thread.id", "thread.name"]
        );
        let truncated = &req.resource_logs[1].scope_logs[0].log_records[0];
        assert!(
            truncated
                .attributes
                .iter()
                .any(|a| a.key == "dt.message.truncated")
        );
    }
}
