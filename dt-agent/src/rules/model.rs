//! Validated rules, as read from rule files: what [`load_dir`](super::load_dir) returns and
//! [`compile`](super::compile) consumes.

use std::path::PathBuf;

use dt_ebpf_common::{
    ACTION_CAPTURE, ACTION_COUNT, ACTION_DROP, ACTION_RATE_LIMIT, ACTION_REDACT, ACTION_SAMPLE,
    ACTION_TRIGGER,
};

use super::diag::Pos;
use super::severity::SeverityRange;

/// A value and where it was written, so later stages can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> At<T> {
    pub fn new(value: T, pos: Pos) -> At<T> {
        At { value, pos }
    }
}

/// One `[[rule]]` table, validated on its own (names are also unique across the set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleDef {
    /// The file the rule comes from.
    pub file: PathBuf,
    /// Where its table starts (the `[[rule]]` header).
    pub pos: Pos,
    /// Unique across the rule set, 1 to `MAX_NAME_LEN` bytes.
    pub name: At<String>,
    /// The action and its parameters; `pos` is the `action` value.
    pub action: At<Action>,
    /// Where the rule applies; never empty, no duplicates.
    pub hooks: Vec<Hook>,
    /// Where each of `hooks` is written (the rule's header when `hooks` is left out).
    pub hook_pos: Vec<Pos>,
    /// The `[[probe]]` of each `uprobe:NAME` hook, in hook order, from anywhere in the rule set
    /// (filled in when the whole set is loaded).
    pub probes: Vec<ProbeDef>,
    /// What a record must match (every condition present; none = every record).
    pub conditions: Match,
    /// The `[[recorder]]` the records a drop, sample or rate_limit rule removes are kept in.
    pub recorder: Option<At<String>>,
    /// A count rule's `group_by`, with its `max_groups` (default [`DEFAULT_MAX_GROUPS`]).
    pub group_by: Option<At<GroupBy>>,
    pub max_groups: u32,
}

/// What a count rule counts its matches by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Service,
    Severity,
    EventName,
    /// `attributes.KEY`: the value of the record's attribute KEY.
    Attribute(String),
}

/// `max_groups` when left out, and its largest value.
pub const DEFAULT_MAX_GROUPS: u32 = 64;
pub const MAX_MAX_GROUPS: u32 = 1024;

impl GroupBy {
    /// The `group_by` value as written.
    pub fn text(&self) -> String {
        match self {
            GroupBy::Service => "service".into(),
            GroupBy::Severity => "severity".into(),
            GroupBy::EventName => "event_name".into(),
            GroupBy::Attribute(k) => format!("attributes.{k}"),
        }
    }
}

/// A typed `attributes` value: it matches an attribute value of its own type only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A whole rule set as read from its files: rules in evaluation order, recorders and states.
/// Derefs to its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSetDef {
    pub rules: Vec<RuleDef>,
    pub recorders: Vec<RecorderDef>,
    pub states: Vec<StateDef>,
    /// The set's `[enrich]`, if a file has one.
    pub enrich: Option<EnrichDef>,
}

/// An `[enrich]` table: the resource attributes the kernel adds to every walked request's
/// Resources (`ENRICH_*` bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrichDef {
    pub file: PathBuf,
    pub pos: Pos,
    pub attrs: u32,
}

impl std::ops::Deref for RuleSetDef {
    type Target = Vec<RuleDef>;
    fn deref(&self) -> &Vec<RuleDef> {
        &self.rules
    }
}

impl From<Vec<RuleDef>> for RuleSetDef {
    fn from(rules: Vec<RuleDef>) -> RuleSetDef {
        RuleSetDef {
            rules,
            ..RuleSetDef::default()
        }
    }
}

/// What [`compile`](super::compile) takes: a [`RuleSetDef`], or rules alone (no recorders,
/// no states).
pub trait RuleSource {
    fn rules(&self) -> &[RuleDef];
    fn recorders(&self) -> &[RecorderDef] {
        &[]
    }
    fn states(&self) -> &[StateDef] {
        &[]
    }
    fn enrich(&self) -> Option<&EnrichDef> {
        None
    }
}

impl RuleSource for RuleSetDef {
    fn rules(&self) -> &[RuleDef] {
        &self.rules
    }
    fn recorders(&self) -> &[RecorderDef] {
        &self.recorders
    }
    fn states(&self) -> &[StateDef] {
        &self.states
    }
    fn enrich(&self) -> Option<&EnrichDef> {
        self.enrich.as_ref()
    }
}

impl RuleSource for [RuleDef] {
    fn rules(&self) -> &[RuleDef] {
        self
    }
}

impl RuleSource for Vec<RuleDef> {
    fn rules(&self) -> &[RuleDef] {
        self
    }
}

impl<const N: usize> RuleSource for [RuleDef; N] {
    fn rules(&self) -> &[RuleDef] {
        self
    }
}

/// One `[[recorder]]` table: a flight recorder, a ring of records in kernel memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecorderDef {
    pub file: PathBuf,
    pub pos: Pos,
    pub name: At<String>,
    /// Bytes of kernel memory of its ring (a multiple of the ring block).
    pub size: u64,
    /// Longest record kept, in bytes.
    pub max_record: u32,
}

/// One `[[state]]` table: a named flag that triggers turn on for `duration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDef {
    pub file: PathBuf,
    pub pos: Pos,
    pub name: At<String>,
    pub duration: std::time::Duration,
}

/// A trigger rule's firing: what it does, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerDef {
    /// Recorders egressed on firing.
    pub flush: Vec<At<String>>,
    /// States turned on on firing.
    pub set_state: Vec<At<String>>,
    pub cooldown: std::time::Duration,
    /// Fire on the `count`-th match within `within` (none: every match, cooldown allowing).
    pub threshold: Option<(u32, std::time::Duration)>,
}

impl RuleDef {
    /// The probe a `uprobe:NAME` hook of this rule names.
    pub fn probe(&self, name: &str) -> Option<&ProbeDef> {
        self.probes.iter().find(|p| p.name.value == name)
    }
}

/// What a rule does on a match (the README's "Evaluation, per record").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Count,
    Drop,
    /// Keeps one match in `keep_one_in` (at least 1).
    Sample {
        keep_one_in: u64,
    },
    /// Keeps up to `per_second` matches a second (at least 1).
    RateLimit {
        per_second: u64,
    },
    /// Removes attributes and/or masks the body of kept records; at least one edit is set.
    Redact {
        remove_attributes: Vec<At<String>>,
        mask_body: bool,
    },
    /// Sends the event to the agent (uprobe hooks).
    Capture,
    /// Counted like count; fires (flushes recorders, sets states) as [`TriggerDef`] says.
    Trigger(TriggerDef),
}

impl Action {
    /// Which action this is, without its parameters.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Count => ActionKind::Count,
            Action::Drop => ActionKind::Drop,
            Action::Sample { .. } => ActionKind::Sample,
            Action::RateLimit { .. } => ActionKind::RateLimit,
            Action::Redact { .. } => ActionKind::Redact,
            Action::Capture => ActionKind::Capture,
            Action::Trigger(_) => ActionKind::Trigger,
        }
    }

    /// The action's name as written in rule files and shown by `stats` (`"rate_limit"`).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The kernel's `ACTION_*` code.
    pub fn code(&self) -> u8 {
        self.kind().code()
    }

    /// Whether evaluation stops after this action matched.
    pub fn stops_evaluation(&self) -> bool {
        matches!(
            self,
            Action::Drop | Action::Sample { .. } | Action::RateLimit { .. }
        )
    }
}

/// An action without its parameters: what compiled rules, the counters and the pinned name
/// table carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Count,
    Drop,
    Sample,
    RateLimit,
    Redact,
    Capture,
    Trigger,
}

impl ActionKind {
    /// Every action with its kernel code and its name (rule files, `stats`, `rules`): the one
    /// table of both.
    const TABLE: [(ActionKind, u8, &'static str); 7] = [
        (ActionKind::Count, ACTION_COUNT, "count"),
        (ActionKind::Drop, ACTION_DROP, "drop"),
        (ActionKind::Sample, ACTION_SAMPLE, "sample"),
        (ActionKind::RateLimit, ACTION_RATE_LIMIT, "rate_limit"),
        (ActionKind::Redact, ACTION_REDACT, "redact"),
        (ActionKind::Capture, ACTION_CAPTURE, "capture"),
        (ActionKind::Trigger, ACTION_TRIGGER, "trigger"),
    ];

    /// Every action, in the order rule-file errors list them.
    pub const ALL: [ActionKind; 7] = [
        ActionKind::Count,
        ActionKind::Drop,
        ActionKind::Sample,
        ActionKind::RateLimit,
        ActionKind::Redact,
        ActionKind::Capture,
        ActionKind::Trigger,
    ];

    fn entry(self) -> (ActionKind, u8, &'static str) {
        Self::TABLE[self as usize]
    }

    /// The action of a name as rule files write it.
    pub fn from_name(name: &str) -> Option<ActionKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The name as written in rule files and shown by `stats` and `rules` (`"rate_limit"`).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// The kernel's `ACTION_*` code.
    pub fn code(self) -> u8 {
        self.entry().1
    }

    /// The action of a kernel `ACTION_*` code (as the pinned name table holds it).
    pub fn from_code(code: u8) -> Option<ActionKind> {
        Self::TABLE
            .iter()
            .find(|(_, c, _)| *c == code)
            .map(|(kind, _, _)| *kind)
    }
}

/// Where a rule is evaluated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// OTLP/HTTP log export requests, in the sk_msg program.
    Otlp,
    /// Calls of the functions of the `[[probe]]` of this name, in the uprobe program.
    Uprobe(String),
}

impl Hook {
    /// A uprobe hook whose probe is not known: what a uprobe rule read back from pinned state
    /// is (the pins keep no probe names). Named `"uprobe"`.
    pub fn unnamed_uprobe() -> Hook {
        Hook::Uprobe(String::new())
    }

    /// The hook's name as written in rule files (`"otlp"`, `"uprobe:syslog"`); `"uprobe"` for
    /// [`Hook::unnamed_uprobe`].
    pub fn name(&self) -> String {
        match self {
            Hook::Otlp => "otlp".to_string(),
            Hook::Uprobe(probe) if probe.is_empty() => "uprobe".to_string(),
            Hook::Uprobe(probe) => format!("uprobe:{probe}"),
        }
    }

    /// The names of `hooks` as `stats` shows a rule on several hooks (one counter):
    /// `"otlp,uprobe:syslog"`.
    pub fn names(hooks: &[Hook]) -> String {
        hooks.iter().map(Hook::name).collect::<Vec<_>>().join(",")
    }

    /// Whether rules on this hook may use `action`; the error says why not. (Whether this kernel
    /// can drop at a uprobe is checked when the rule set is installed.)
    pub fn check_action(&self, action: &Action) -> Result<(), String> {
        match (self, action) {
            (Hook::Otlp, Action::Capture) => Err("capture is only for uprobe hooks".to_string()),
            (Hook::Otlp, _) => Ok(()),
            (
                Hook::Uprobe(_),
                Action::Count | Action::Capture | Action::Drop | Action::Trigger(_),
            ) => Ok(()),
            (Hook::Uprobe(_), other) => Err(format!(
                "{} is not supported on uprobe hooks: they take count, capture and trigger \
                 (and drop where the kernel lets a uprobe skip a call)",
                other.name()
            )),
        }
    }
}

/// One `[[probe]]` table: which functions to probe and how to read a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeDef {
    /// The file the probe comes from.
    pub file: PathBuf,
    /// Where its table starts (the `[[probe]]` header).
    pub pos: Pos,
    /// Unique among the set's probes; rules name it in `uprobe:NAME`.
    pub name: At<String>,
    /// An absolute path, or a library name (`"libc"`) resolved as the dynamic linker would.
    /// With a preset and no `binary`, the preset's default (at the header's position).
    pub binary: At<String>,
    /// The functions and how their arguments are read.
    pub kind: ProbeKind,
    /// Only this process's calls (the attachment is limited to it).
    pub pid: Option<At<u32>>,
    /// The `service` the calls belong to; none: the calling process's name (comm).
    pub service: Option<At<String>>,
}

/// What a probe attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// `preset = "syslog"`: glibc's `syslog`, `__syslog_chk`, `vsyslog` and `__vsyslog_chk`.
    Syslog,
    /// One function of the application's own.
    Function {
        symbol: At<String>,
        severity: SeveritySource,
        /// Index (0-5) of the `char *` argument that is the message.
        message_arg: u8,
    },
}

/// Where a probed call's OTLP SeverityNumber comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeveritySource {
    /// Every call has this SeverityNumber (0: unspecified).
    Const(u8),
    /// Integer argument `index` (0-5, read as a 32-bit `int`), mapped.
    Arg { index: u8, map: SeverityMap },
}

/// How an integer severity argument becomes an OTLP SeverityNumber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeverityMap {
    /// `"otlp"`: the argument is a SeverityNumber; 1-24 as is, anything else unspecified (0).
    Otlp,
    /// `"syslog"`: a syslog priority; its level (`pri & 7`) maps EMERG, ALERT, CRIT → FATAL,
    /// ERR → ERROR, WARNING → WARN, NOTICE, INFO → INFO, DEBUG → DEBUG.
    Syslog,
    /// A table of argument values and SeverityNumbers; other values are unspecified (0).
    Table(Vec<(i32, u8)>),
}

/// The SeverityNumbers of syslog's levels 0-7 (LOG_EMERG .. LOG_DEBUG): FATAL, FATAL, FATAL,
/// ERROR, WARN, INFO, INFO, DEBUG (each level's first number).
pub const SYSLOG_SEVERITIES: [u8; 8] = [21, 21, 21, 17, 13, 9, 9, 5];

/// The `[rule.match]` table. Every condition present must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    pub severity: Option<At<SeverityRange>>,
    /// The resource attribute `service.name` equals this (non-empty).
    pub service: Option<At<String>>,
    /// The record's string body contains these bytes (non-empty).
    pub body_contains: Option<At<String>>,
    /// Attributes of the record: key (non-empty) equals value, of the value's type. Keys are
    /// distinct.
    pub attributes: Vec<(At<String>, At<AttrValue>)>,
    /// The record's `event_name` equals this (non-empty).
    pub event_name: Option<At<String>>,
    /// A state that must be on (`"NAME"`, false) or off (`"!NAME"`, true).
    pub state: Option<(At<String>, bool)>,
}

impl Match {
    /// The severity range the rule requires ([`SeverityRange::ANY`] without a condition).
    pub fn severity_range(&self) -> SeverityRange {
        self.severity
            .as_ref()
            .map_or(SeverityRange::ANY, |s| s.value)
    }
}
