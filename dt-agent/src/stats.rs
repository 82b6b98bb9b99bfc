//! The `stats --json` document (see INTERFACE.md), read back from the per-CPU counter maps.

use serde::{Deserialize, Serialize};

/// One rule's counters. Rules removed from the set stay listed with `active: false`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    pub name: String,
    pub action: String,
    pub hook: String,
    pub active: bool,
    pub matched: u64,
    pub kept: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub redacted: u64,
}

/// Whole-path counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotalStats {
    pub connections: u64,
    pub requests: u64,
    pub log_requests: u64,
    pub records: u64,
    pub records_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub edit_failures: u64,
    pub untracked_bytes: u64,
    /// Requests held in the kernel right now (corked, waiting for the rest of their bytes).
    pub in_flight: u64,
    /// Requests that left byte-for-byte untouched, by reason (every reason is always present).
    pub passthrough: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub generation: u64,
    pub enabled: bool,
    pub rules: Vec<RuleStats>,
    pub totals: TotalStats,
}

impl Stats {
    /// The rule named `name`, if listed.
    pub fn rule(&self, name: &str) -> Option<&RuleStats> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Sum of every passthrough reason.
    pub fn passthrough_total(&self) -> u64 {
        self.totals.passthrough.values().sum()
    }
}
