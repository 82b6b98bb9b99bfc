//! Attach plans: a rule set's probes resolved on this host (file, functions, process), and the
//! `PROBE_ENTRIES` table entry of each function.

use std::path::{Path, PathBuf};

use dt_ebpf_common::uprobe::{
    ARG_NONE, AddrRange, ENTRY_STATIC_SERVICE, MAX_FAMILY, ProbeEntry, SEV_CONST, SEV_DIRECT,
    SEV_TABLE, SevPair,
};

use super::resolve::{FnSym, elf_functions, resolve_binary};
use crate::rules::{
    CompiledProbe, Diagnostic, ProbeKind, SYSLOG_SEVERITIES, SeverityMap, SeveritySource, UprobeSet,
};

/// The functions of `preset = "syslog"`, with the arguments each is read from: (symbol, message
/// `char *`, the `char *` a `"%s"` message prints, the `va_list` whose first argument it prints).
/// The priority is argument 0 of all four.
const SYSLOG_FAMILY: [(&str, u8, u8, u8); MAX_FAMILY] = [
    ("syslog", 1, 2, ARG_NONE),
    ("__syslog_chk", 2, 3, ARG_NONE),
    ("vsyslog", 1, ARG_NONE, 2),
    ("__vsyslog_chk", 2, ARG_NONE, 3),
];

pub(super) struct EntryPlan {
    pub(super) symbol: String,
    pub(super) sym: FnSym,
    pub(super) msg_arg: u8,
    pub(super) str_arg: u8,
    pub(super) va_arg: u8,
}

pub(super) struct ProbePlan<'a> {
    pub(super) index: usize,
    pub(super) probe: &'a CompiledProbe,
    pub(super) path: PathBuf,
    pub(super) entries: Vec<EntryPlan>,
    pub(super) family: [AddrRange; MAX_FAMILY],
}

/// Resolves every probe of `set`: its file, its functions, its process.
pub(super) fn plan(set: &UprobeSet) -> Result<Vec<ProbePlan<'_>>, Vec<Diagnostic>> {
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
pub(super) fn table_entry(p: &ProbePlan<'_>, e: &EntryPlan) -> ProbeEntry {
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
