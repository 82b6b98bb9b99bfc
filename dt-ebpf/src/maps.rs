//! Every map of dt's kernel side. Names, types and sizes are part of the layout versioned by
//! `LAYOUT_VERSION` (see dt-ebpf-common's layout module).

use aya_ebpf::{
    bindings::BPF_F_INNER_MAP,
    btf_maps::{self, ArrayOfMaps, SkStorage},
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, SockHash},
};
use dt_ebpf_common::{
    AcTable, CgroupIds, Control, EnrichStr, GroupKey, GroupNotes, HashEntry, HashKey, Held,
    MAX_CGROUP_IDS, MAX_CONDS, MAX_GROUP_ENTRIES, MAX_HELD, MAX_NAME_LEN, MAX_RECORDERS, MAX_SLOTS,
    MAX_STATES, NameEntry, NameKey, REBODY_SLOTS, Rebody, RecConf, RecCounters, RecState,
    RingBlock, RuleCounters, RuleSet, SockState, StrKey, Totals, TriggerState,
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
pub static STRINGS: HashMap<StrKey, u64> = HashMap::with_max_entries(8 * MAX_CONDS as u32, 0);

/// Attribute pairs and redacted attribute names of both slots by their hash, for the record
/// fast path (`HashEntry::of` each `STRINGS` entry of those kinds).
#[map]
pub static ATTR_HASHES: HashMap<HashKey, HashEntry> =
    HashMap::with_max_entries(8 * MAX_CONDS as u32, 0);

/// Grouped counters: a grouped count rule's counter slot and a group value → its matches
/// (see `sk_msg/groups.rs`).
#[map]
pub static GROUPS: HashMap<GroupKey, u64> = HashMap::with_max_entries(MAX_GROUP_ENTRIES, 0);

/// Distinct values counted in `GROUPS` of each grouped rule, by counter slot (its
/// `max_groups` bounds them).
#[map]
pub static GROUP_COUNT: Array<u64> = Array::with_max_entries(MAX_SLOTS, 0);

/// `[enrich]`: the host name (entry 0), written by the agent.
#[map]
pub static ENRICH_HOST: Array<EnrichStr> = Array::with_max_entries(1, 0);

/// `[enrich]`: cgroup v2 id → the container id and pod uid its path names (the agent keeps it up
/// to date from the cgroup hierarchy).
#[map]
pub static CGROUP_IDS: HashMap<u64, CgroupIds> = HashMap::with_max_entries(MAX_CGROUP_IDS, 0);

/// The grouped matches of the request being walked on a connection.
#[btf_map]
pub static GROUP_NOTES: SkStorage<GroupNotes> = SkStorage::new();

/// The Aho-Corasick automata of both slots, flattened, one entry a slot: what the OTLP walk's
/// body scan and the uprobe hook's message scan read.
#[map]
pub static AC_FLAT: Array<AcTable> = Array::with_max_entries(2, 0);

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

/// Until when (`bpf_ktime_get_ns`) each state slot is on; 0: off. Triggers (in the kernel) and
/// the agent (`dt-agent state`) write it, one u64 each.
#[map]
pub static STATES: Array<u64> = Array::with_max_entries(MAX_STATES, 0);

/// How long a firing turns each state slot on, in ns (the agent's, from the rule set).
#[map]
pub static STATE_DURATIONS: Array<u64> = Array::with_max_entries(MAX_STATES, 0);

/// Each trigger rule's firing state, by counter slot.
#[map]
pub static TRIGGERS: Array<TriggerState> = Array::with_max_entries(MAX_SLOTS, 0);

/// Recorder slot → its ring: an array of blocks the agent creates at the recorder's size (and
/// frees when the recorder leaves the rule set).
#[btf_map]
pub static RECORDERS: ArrayOfMaps<
    btf_maps::Array<RingBlock, 1, { BPF_F_INNER_MAP as usize }>,
    { MAX_RECORDERS as usize },
> = ArrayOfMaps::new();

/// Each recorder's ring head and flush requests (kernel-written, compare-exchange).
#[map]
pub static REC_STATE: Array<RecState> = Array::with_max_entries(MAX_RECORDERS, 0);

/// Each recorder's counters.
#[map]
pub static REC_COUNTERS: PerCpuArray<RecCounters> = PerCpuArray::with_max_entries(MAX_RECORDERS, 0);

/// Each recorder's size and `max_record`, and the agent's flush bookkeeping (agent-written).
#[map]
pub static REC_CONF: Array<RecConf> = Array::with_max_entries(MAX_RECORDERS, 0);

/// Recorder and state name → slot (the key's first byte is `r` or `s`): the agent's table,
/// pinned with the rest. The programs never read it.
#[map]
pub static OBJECTS: HashMap<[u8; MAX_NAME_LEN], u32> =
    HashMap::with_max_entries(MAX_RECORDERS + MAX_STATES, 0);

/// Scratch for the uprobe hook: the states on when a call's evaluation begins, and the trigger
/// rules it matched (kept in map memory, opaque to the verifier, not in registers).
#[map]
pub static STATE_SCRATCH: PerCpuArray<CallScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct CallScratch {
    pub states: u64,
    pub n_fires: u32,
    pub fires: [u8; 4],
}
