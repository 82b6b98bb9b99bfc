//! Validated rules, as read from rule files: what [`load_dir`](super::load_dir) returns and
//! [`compile`](super::compile) consumes.

use std::path::PathBuf;

use dt_ebpf_common::{
    ACTION_CAPTURE, ACTION_COUNT, ACTION_DROP, ACTION_RATE_LIMIT, ACTION_REDACT, ACTION_SAMPLE,
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
    /// What a record must match (every condition present; none = every record).
    pub conditions: Match,
}

/// What a rule does on a match (INTERFACE.md, "Evaluation").
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
}

impl Action {
    /// The action's name as written in rule files and shown by `stats` (`"rate_limit"`).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Count => "count",
            Action::Drop => "drop",
            Action::Sample { .. } => "sample",
            Action::RateLimit { .. } => "rate_limit",
            Action::Redact { .. } => "redact",
            Action::Capture => "capture",
        }
    }

    /// The kernel's `ACTION_*` code.
    pub fn code(&self) -> u8 {
        match self {
            Action::Count => ACTION_COUNT,
            Action::Drop => ACTION_DROP,
            Action::Sample { .. } => ACTION_SAMPLE,
            Action::RateLimit { .. } => ACTION_RATE_LIMIT,
            Action::Redact { .. } => ACTION_REDACT,
            Action::Capture => ACTION_CAPTURE,
        }
    }

    /// Whether evaluation stops after this action matched.
    pub fn stops_evaluation(&self) -> bool {
        matches!(
            self,
            Action::Drop | Action::Sample { .. } | Action::RateLimit { .. }
        )
    }
}

/// Where a rule is evaluated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// OTLP/HTTP log export requests, in the sk_msg program.
    Otlp,
}

impl Hook {
    /// The hook's name as written in rule files (`"otlp"`).
    pub fn name(self) -> &'static str {
        match self {
            Hook::Otlp => "otlp",
        }
    }

    /// Whether rules on this hook may use `action`; the error says why not.
    pub fn check_action(self, action: &Action) -> Result<(), String> {
        match (self, action) {
            (Hook::Otlp, Action::Capture) => Err("capture is only for uprobe hooks".to_string()),
            (Hook::Otlp, _) => Ok(()),
        }
    }
}

/// The `[rule.match]` table. Every condition present must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    pub severity: Option<At<SeverityRange>>,
    /// The resource attribute `service.name` equals this (non-empty).
    pub service: Option<At<String>>,
    /// The record's string body contains these bytes (non-empty).
    pub body_contains: Option<At<String>>,
    /// String attributes of the record: key (non-empty) equals value. Keys are distinct.
    pub attributes: Vec<(At<String>, At<String>)>,
}

impl Match {
    /// The severity range the rule requires ([`SeverityRange::ANY`] without a condition).
    pub fn severity_range(&self) -> SeverityRange {
        self.severity
            .as_ref()
            .map_or(SeverityRange::ANY, |s| s.value)
    }
}
