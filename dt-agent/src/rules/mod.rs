//! Rule files: parsing, validation and compilation into the kernel's rule set.
//!
//! The pipeline has two stages:
//!
//! 1. [`load_dir`] / [`load_files`] / [`load_sources`] read `*.toml` rule files (see the
//!    README's "Rules") into validated [`RuleDef`]s. Everything that can be checked on
//!    one rule in isolation is checked here, plus the uniqueness of names across the set.
//! 2. [`compile`] turns a whole rule set into the map contents the kernel reads ([`Compiled`]):
//!    the [`RuleSet`](dt_ebpf_common::RuleSet), the service and attribute strings, and the
//!    Aho-Corasick automaton for `body_contains`. The kernel's limits (sizes and counts) and the
//!    actions the kernel cannot run yet are checked here.
//!
//! Both stages report problems as [`Diagnostic`]s (`file:line:column: message`) and go on after
//! one: every file and every rule is checked. Every unknown key of a table is reported, and the
//! table's other keys are still checked; a wrong type, or a required key missing, ends the
//! checks of that table there. [`check_files`] runs both stages, for `dt-agent check`.
//!
//! [`HostEnv`] runs the kernel's OTLP walker on the host over a [`Compiled`] rule set.

mod ac;
mod bits;
mod compile;
pub(crate) mod diag;
mod env;
mod load;
mod model;
mod parse;
mod severity;
mod slots;

#[cfg(test)]
mod tests;

pub use compile::{
    Compiled, CompiledProbe, CompiledRecorder, CompiledRule, CompiledState, UprobeSet, compile,
};
pub(crate) use diag::SourceText;
pub use diag::{Diagnostic, Pos, RuleErrors};
pub use env::HostEnv;
pub(crate) use load::read_text;
pub use load::{
    check_files, compile_dir, compile_dir_sources, load_dir, load_dir_and, load_files,
    load_sources, pushed_names, rule_files,
};
pub use model::{
    Action, ActionKind, At, AttrValue, EnrichDef, GroupBy, Hook, Match, ProbeDef, ProbeKind,
    RecorderDef, RuleDef, RuleSetDef, RuleSource, SYSLOG_SEVERITIES, SeverityMap, SeveritySource,
    StateDef, TriggerDef,
};
pub(crate) use parse::read_table_naming;
pub use parse::{MAX_STATE_DURATION, MIN_STATE_DURATION, parse_duration, parse_size};
pub use severity::SeverityRange;
pub use slots::{ObjectSlots, SlotTable};
