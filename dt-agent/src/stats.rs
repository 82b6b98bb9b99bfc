//! The `stats --json` document (see the README), read back from the per-CPU counter maps.

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
    /// Trigger rules: their firings (a firing stands even if its request passed through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<u64>,
    /// Count rules with `group_by`: matches by group value (with `__other__` and
    /// `__missing__`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<std::collections::BTreeMap<String, u64>>,
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
    /// How long the request held longest right now has been held, in milliseconds (0 when
    /// none is).
    #[serde(default)]
    pub in_flight_longest_ms: u64,
    /// Held requests whose connection closed before the rest of them was sent (the kernel
    /// dropped their bytes with the socket; they never left).
    #[serde(default)]
    pub released: u64,
    /// Walk steps of the requests walked (with `records`: steps per record).
    #[serde(default)]
    pub walk_steps: u64,
    /// Records of those requests the walk took whole (its fast path).
    #[serde(default)]
    pub fast_records: u64,
    /// Requests that left byte-for-byte untouched, by reason (every reason is always present).
    pub passthrough: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub generation: u64,
    pub enabled: bool,
    /// Why evaluation is off, while it is: the rip cord pulled by hand, or a cost ceiling
    /// exceeded (with the measured and allowed figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// The same as one fixed word, for scripts and alerts (the `reason` label of
    /// `dt_disabled_info`): `ceiling`, `disable` (by hand), `stopping` (the drain before
    /// detaching), `uninstall_cut_short` (adopted pins an unfinished uninstall left pulled) or
    /// `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_cause: Option<String>,
    /// Why the last change of the rule set was refused (a reload of the rules directory, or a
    /// remote config), while it stands: the active set is the one before it. A later change
    /// that applies clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_error: Option<String>,
    /// What dt's kernel programs cost, measured over the last window (with `[ceiling]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostStats>,
    pub rules: Vec<RuleStats>,
    pub totals: TotalStats,
    /// The uprobe hook (see `crate::hooks::uprobe`).
    #[serde(default)]
    pub uprobes: UprobeStats,
    /// The active set's flight recorders.
    #[serde(default)]
    pub recorders: Vec<RecorderStats>,
    /// The active set's states.
    #[serde(default)]
    pub states: Vec<StateStats>,
}

/// The cost of dt's kernel programs over the last measuring window (`[ceiling]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CostStats {
    /// The window's length, and the CPUs online.
    pub window_ms: u64,
    pub cpus: u64,
    /// CPU time of dt's kernel programs in the window (all hooks), and their runs.
    pub kernel_ns: u64,
    pub runs: u64,
    /// That CPU time as a share of all CPUs' time, in millionths (10,000 is 1%), and the
    /// ceiling.
    pub cpu_ppm: u64,
    pub cpu_ceiling_ppm: u64,
    /// Windows that went over the ceiling (each pulled the rip cord).
    pub exceeded: u64,
    /// Kernel memory of dt's maps (recorders included), in bytes.
    pub map_bytes: u64,
}

/// One flight recorder. `records` and `bytes` are what it holds now; the rest count since it
/// was created (or its size last changed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecorderStats {
    pub name: String,
    /// Records held now, and the ring bytes they take.
    pub records: u64,
    pub bytes: u64,
    /// Records written over by newer ones before they were flushed.
    pub overwritten: u64,
    /// Records longer than `max_record`, not recorded.
    pub too_long: u64,
    /// Flushes done, and the records they egressed.
    pub flushes: u64,
    pub flushed_records: u64,
    /// Flushes given up (the endpoint failed every try); their records stayed.
    pub flush_failures: u64,
    /// Records not recorded otherwise (recorder just removed, message unreadable).
    pub lost: u64,
    /// Records recorded in all, the ring's size in bytes, and the kernel memory it takes.
    pub recorded: u64,
    pub size: u64,
    pub memory: u64,
}

/// One state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateStats {
    pub name: String,
    pub on: bool,
    /// Milliseconds until it turns off (0 when off).
    pub remaining_ms: u64,
}

/// The uprobe hook's counters. Per rule, a probed call that a rule matches counts in its
/// `matched`; for a `capture` rule, `kept` counts the matched calls that went into the ring
/// buffer, so `matched - kept` were lost to a full ring buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UprobeStats {
    /// Functions attached right now.
    pub attached: u64,
    /// Functions detached from the rule set but whose detach the kernel has not finished: it
    /// waits while a probed call waits for a page of its message (`uprobe_fault_in`).
    #[serde(default)]
    pub detaching: u64,
    /// Whether this kernel lets a uprobe skip a call (what `drop` on a uprobe hook needs).
    pub drop_supported: bool,
    /// Whether a message on a page the process has not touched yet is faulted in and read (a
    /// sleepable uprobe); `false`: such a message is unreadable (`uprobe_fault_in` off, the
    /// default, or a kernel older than 6.0).
    #[serde(default)]
    pub fault_in: bool,
    /// Message pages faulted in (by this agent's program, since it started).
    #[serde(default)]
    pub pages_faulted_in: u64,
    /// Application calls evaluated against the rules.
    pub calls: u64,
    /// Calls a probed library made into its own probed functions, not evaluated again.
    pub nested: u64,
    /// Calls not evaluated (not counted by any rule, not captured, not dropped) because they
    /// came while another call's evaluation on their CPU was preempted: only on kernels that
    /// preempt kernel code (`preempt=full` or `lazy`). By this agent's program, since it
    /// started.
    #[serde(default)]
    pub preempted: u64,
    /// Calls whose message could not be read (it is empty).
    pub unreadable: u64,
    /// Calls whose message was cut at the bound (255 bytes).
    pub truncated: u64,
    /// Calls that capture rules sent into the ring buffer.
    pub captured: u64,
    /// Calls that capture rules matched but the full ring buffer refused.
    pub capture_lost: u64,
    /// Captured calls not exported because `[ceiling] captures_per_second` was reached in
    /// their second.
    #[serde(default)]
    pub capture_throttled: u64,
    /// Captured calls exported as OTLP log records.
    pub exported: u64,
    /// Captured calls in exports that failed (collector unreachable, error answer).
    pub export_failed: u64,
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

/// The error of a read of the counters once dt is uninstalled: there are none, and nothing of
/// dt is attached. The metrics endpoint of an agent idle after `uninstall` answers 200 with a
/// comment saying so (a liveness probe on it keeps passing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uninstalled;

impl std::fmt::Display for Uninstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dt was uninstalled: nothing of dt is attached or pinned")
    }
}

impl std::error::Error for Uninstalled {}
