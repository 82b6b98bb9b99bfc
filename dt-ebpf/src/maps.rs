//! Every map of dt's kernel side. Names, types and sizes are part of the layout versioned by
//! `LAYOUT_VERSION` (see dt-ebpf-common's layout module).

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, SockHash},
};
use dt_ebpf_common::{
    AcRow, Control, Held, MAX_AC_STATES, MAX_CONDS, MAX_HELD, MAX_SLOTS, NameEntry, NameKey,
    REBODY_SLOTS, Rebody, RuleCounters, RuleSet, SockState, StrKey, Totals,
};

/// The active rule set slot and generation, the rip cord, the size bound.
#[map]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// OTLP/HTTP ports (host byte order) whose connections are hooked.
#[map]
pub static PORTS: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// Hooked connections, keyed by socket cookie.
#[map]
pub static SOCKS: SockHash<u64> = SockHash::with_max_entries(65535, 0);

/// Two rule set slots: the agent fills the inactive one, then flips `CONTROL.active`.
#[map]
pub static RULESETS: Array<RuleSet> = Array::with_max_entries(2, 0);

/// Service names and attribute pairs of both slots → condition bits.
#[map]
pub static STRINGS: HashMap<StrKey, u64> = HashMap::with_max_entries(4 * MAX_CONDS as u32, 0);

/// Aho-Corasick automata of both slots (`slot * MAX_AC_STATES + state`).
#[map]
pub static AC: Array<AcRow> = Array::with_max_entries(2 * MAX_AC_STATES, 0);

/// Matches of each sample rule so far, by slot: one global counter (atomic fetch-add), so one in
/// N is kept over all CPUs.
#[map]
pub static SAMPLES: Array<u64> = Array::with_max_entries(MAX_SLOTS, 0);

/// Token bucket of each rate_limit rule, by slot, as a GCRA theoretical arrival time in
/// nanoseconds (updated with compare-exchange).
#[map]
pub static RATES: Array<u64> = Array::with_max_entries(MAX_SLOTS, 0);

/// Per-rule counters by slot.
#[map]
pub static RULE_COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// Whole-path counters.
#[map]
pub static TOTALS: PerCpuArray<Totals> = PerCpuArray::with_max_entries(1, 0);

/// Rule name → counter slot: the agent's table, kept here so that it is pinned with the
/// counters. The programs never read it.
#[map]
pub static NAMES: HashMap<NameKey, NameEntry> = HashMap::with_max_entries(MAX_SLOTS, 0);

/// Per-connection state and walk scratch.
#[btf_map]
pub static SOCK_STATE: SkStorage<SockState> = SkStorage::new();

/// Requests held in the kernel now, by socket cookie: who sent them and since when. The agent
/// reads it to say whom it waits for before detaching; the programs only add and remove.
#[map]
pub static HELD: HashMap<u64, Held> = HashMap::with_max_entries(MAX_HELD, 0);

/// Buffers the data of chunked requests of several chunks is walked in (see `sk_msg/rechunk.rs`).
#[map]
pub static REBODY: Array<Rebody> = Array::with_max_entries(REBODY_SLOTS, 0);
