//! The BPF map layout: names, sizes and `#[repr(C)]` value types, with padding spelled out.
//!
//! The layout is versioned by [`LAYOUT_VERSION`]. Pinned maps live under
//! `/sys/fs/bpf/dt/v<LAYOUT_VERSION>/`, so an agent never adopts maps of another layout. Bump it
//! whenever a map's type, key, value or size changes.

/// Version of everything in this module. Part of the pin path, and stored in [`Control`].
/// 7: the walk in `SockState` grew (the body scan's word test), and `tests/layout_version.rs`
/// holds every pinned type's size from here on.
pub const LAYOUT_VERSION: u32 = 7;

/// Rules in one rule set.
pub const MAX_RULES: usize = 128;
/// Counter slots. A slot belongs to a rule *name* for the agent's lifetime (and, pinned, across
/// restarts), so removed rules keep their final counts; this bounds distinct names seen.
pub const MAX_SLOTS: u32 = 1024;
/// Distinct values per condition kind in one rule set (one bit each in a `u64`).
pub const MAX_CONDS: usize = 64;
/// Aho-Corasick states per rule set (bounds the total bytes of all `body_contains` needles).
pub const MAX_AC_STATES: u32 = 1024;
/// Longest `body_contains` needle.
pub const MAX_NEEDLE_LEN: usize = 128;
/// Longest attribute key in a rule (and the longest record attribute key that can match).
pub const MAX_ATTR_KEY_LEN: usize = 64;
/// Longest attribute value in a rule.
pub const MAX_ATTR_VALUE_LEN: usize = 128;
/// Longest `service` value in a rule.
pub const MAX_SERVICE_LEN: usize = 128;
/// Longest `event_name` value in a rule (and the longest record event name that can match).
pub const MAX_EVENT_LEN: usize = 128;
/// Bytes of a [`StrKey`]: an attribute key followed by its value, or a service name.
pub const STR_KEY_BYTES: usize = MAX_ATTR_KEY_LEN + MAX_ATTR_VALUE_LEN;
/// Rule names are stored in the pinned name→slot table up to this length.
pub const MAX_NAME_LEN: usize = 64;

/// Longest HTTP request head (request line + headers) followed. Longer heads are passed through
/// and the connection is left alone from then on.
pub const MAX_HEAD_LEN: u32 = 8192;
/// Default bound on a whole request (head + body) that is corked and edited. It stays below the
/// sk_msg cork capacity (17 scatterlist elements of up to 32 KiB), see KERNEL-NOTES.
pub const DEFAULT_MAX_REQUEST: u32 = 256 * 1024;
/// Hard ceiling for the configurable bound.
pub const MAX_REQUEST_CEILING: u32 = 512 * 1024;

/// Dropped-record ranges (merged runs) one request may carry. More passes the request through.
pub const MAX_EDITS: usize = 1024;
/// Length prefixes (ResourceLogs, ScopeLogs, and LogRecords that lose attributes) one request may
/// need rewritten.
pub const MAX_FIXES: usize = 1024;
/// Attributes of one log record whose key some `remove_attributes` names.
pub const MAX_RECORD_REDACTS: usize = 16;
/// String body occurrences of one log record (a repeated `body` field) that `mask_body` masks.
pub const MAX_RECORD_BODIES: usize = 4;
/// Redact rules that may match one log record.
pub const MAX_RECORD_REDACT_RULES: usize = 16;
/// String bodies one request may have masked.
pub const MAX_MASKS: usize = 1024;
/// Distinct attribute names in `remove_attributes` across a rule set (one bit each).
pub const MAX_REMOVE_KEYS: usize = 64;
/// Largest `per_second` of a rate_limit rule.
pub const MAX_RATE: u64 = 1_000_000_000;

// ------------------------------------------------------------------------------------------
// Actions, hooks

pub const ACTION_COUNT: u8 = 0;
pub const ACTION_DROP: u8 = 1;
pub const ACTION_SAMPLE: u8 = 2;
pub const ACTION_RATE_LIMIT: u8 = 3;
pub const ACTION_REDACT: u8 = 4;
pub const ACTION_CAPTURE: u8 = 5;
/// Counted like `count`; may fire (see [`Trigger`]).
pub const ACTION_TRIGGER: u8 = 6;

/// Severity numbers outside 0..=24 are folded to this value, which no range contains.
pub const SEV_OUT_OF_RANGE: u8 = 255;

// ------------------------------------------------------------------------------------------
// Rule sets

/// One compiled rule. A record matches when its severity is in `sev_lo..=sev_hi` and every bit
/// of `body`, `attrs` and `service` is set in the record's condition words.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Rule {
    /// Counter slot (index into the `RULE_COUNTERS` per-CPU array).
    pub slot: u16,
    pub action: u8,
    /// Severity range, inclusive. `0..=255` means no severity condition.
    pub sev_lo: u8,
    pub sev_hi: u8,
    /// [`RULE_MASK_BODY`] for a redact rule with `mask_body`.
    pub flags: u8,
    /// Recorder slot + 1 of a drop, sample or rate_limit rule whose removed records are
    /// recorded (0: none).
    pub recorder: u8,
    /// One condition bit the rule needs, to turn it down with one test when a record lacks it:
    /// the kind in the top two bits ([`FIRST_BODY`], [`FIRST_ATTRS`], [`FIRST_SERVICE`]; 0:
    /// none), the bit in the low six ([`Rule::first_of`]).
    pub first: u8,
    /// A count rule's `group_by` ([`GROUP_SERVICE`] ...; 0: none), for `attributes.KEY` the
    /// key's index among the set's group keys, and its `max_groups`.
    pub group: u8,
    pub group_key: u8,
    pub max_groups: u16,
    pub _pad_group: u32,
    /// Bits of `body_contains` needles (Aho-Corasick outputs) that must be present.
    pub body: u64,
    /// Bits of `attributes` key=value pairs (of any value type) and `event_name` values that
    /// must be present.
    pub attrs: u64,
    /// Bits of `service` values that must match.
    pub service: u64,
    /// Bits of the attribute names a redact rule removes (see [`STR_REDACT`]).
    pub remove: u64,
    /// Action parameter: keep_one_in for sample, per_second for rate_limit.
    pub param: u64,
    /// States (bits of state slots) that must be on, and that must be off.
    pub state_on: u64,
    pub state_off: u64,
    /// What a trigger rule does when it fires.
    pub trigger: Trigger,
}

/// A trigger rule's firing: when, and what it does. Shared by both hooks.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Trigger {
    /// Recorders (bits of recorder slots) whose flush it requests.
    pub flush: u32,
    /// Fire on the `threshold`-th match within `within_ms` of the first (0 or 1: every match).
    pub threshold: u32,
    /// States (bits of state slots) it turns on, each for its duration (`STATE_DURATIONS`).
    pub set_state: u64,
    /// Matches within this long after a firing don't fire.
    pub cooldown_ns: u64,
    pub within_ms: u32,
    pub _pad: u32,
}

impl Trigger {
    pub const NONE: Trigger = Trigger {
        flush: 0,
        threshold: 0,
        set_state: 0,
        cooldown_ns: 0,
        within_ms: 0,
        _pad: 0,
    };
}

/// [`Rule::flags`]: the redact rule masks the string body.
pub const RULE_MASK_BODY: u8 = 1;

/// A whole rule set, stored in one of two slots of the `RULESETS` array (double buffering):
/// the agent writes the inactive slot, then flips [`Control::active`].
#[derive(Copy, Clone)]
#[repr(C)]
pub struct RuleSet {
    /// Generation of this slot's contents; 0 while the agent is rewriting it.
    pub generation: u64,
    pub n_rules: u32,
    /// Aho-Corasick states in use (0 = no body needles).
    pub ac_states: u32,
    /// Distinct attribute names that redact rules remove (0 = record attributes need no key
    /// lookup for redaction).
    pub remove_keys: u32,
    /// What the rules look at ([`NEED_SERVICE`], [`NEED_ATTRS`], [`NEED_STATES`]): the walk
    /// still checks the whole request, but skips the lookups no rule needs.
    pub needs: u32,
    /// The resource attributes `[enrich]` adds ([`ENRICH_PID`] ...; 0: no enrichment).
    pub enrich: u32,
    /// The bytes that can begin a needle, when there are at most four of them and the scan
    /// skips ([`NEED_SCAN_WORDS`]); fewer repeat the first. The scan then tests 8 bytes at a
    /// time in its start state.
    pub ac_first: [u8; 4],
    /// Bits of the states some rule's match names: the ones read when a record's evaluation
    /// begins.
    pub states: u64,
    /// Attribute key lengths the rules' `attributes` conditions name (bit `len & 63`): a record
    /// attribute whose key length is not among them is not looked up.
    pub attr_key_lens: u64,
    /// The same for the names `remove_attributes` lists.
    pub redact_key_lens: u64,
    /// Bytes that leave the body automaton in its start state (bit `b` of word `b >> 6`): the
    /// scan skips them there with one bit test each.
    pub ac_skip: [u64; 4],
    /// The lengths of the attribute keys `group_by` names (bit `len & 63`).
    pub group_key_lens: u64,
    pub rules: [Rule; MAX_RULES],
}

/// The bit of an attribute key length in [`RuleSet::attr_key_lens`] and
/// [`RuleSet::redact_key_lens`].
#[inline(always)]
pub fn key_len_bit(len: u32) -> u64 {
    1 << (len & 63)
}

/// [`RuleSet::needs`]: some rule matches on `service`.
pub const NEED_SERVICE: u32 = 1;
/// Some rule matches on `attributes`.
pub const NEED_ATTRS: u32 = 2;
/// Some rule matches on `state`.
pub const NEED_STATES: u32 = 4;
/// Some rule records the records it removes.
pub const NEED_RECORD: u32 = 8;
/// The body scan passes over bytes that cannot begin a needle ([`RuleSet::ac_skip`]): set when
/// no needle begins with an ASCII letter, digit or space, bytes that fill most text, where a
/// test a byte would cost more than it saves.
pub const NEED_SCAN_SKIP: u32 = 16;
/// Some rule matches on `event_name` (its bits are among the `attrs` bits).
pub const NEED_EVENT: u32 = 32;
/// Some count rule has a `group_by`.
pub const NEED_GROUPS: u32 = 64;
/// With [`NEED_SCAN_SKIP`]: at most four bytes can begin a needle ([`RuleSet::ac_first`]), so
/// the scan passes over 8 bytes at a time in its start state when none of them is one.
pub const NEED_SCAN_WORDS: u32 = 128;

/// [`RuleSet::enrich`]: the resource attributes the kernel adds, in the order they are added.
pub const ENRICH_PID: u32 = 1;
pub const ENRICH_HOST: u32 = 2;
pub const ENRICH_CONTAINER: u32 = 4;
pub const ENRICH_POD: u32 = 8;
/// Their keys, by bit index.
pub const ENRICH_KEYS: [&[u8]; 4] = [
    b"process.pid",
    b"host.name",
    b"container.id",
    b"k8s.pod.uid",
];

/// A string value `[enrich]` adds (`len` 0: none): the host name (`ENRICH_HOST[0]`, the
/// agent's), a container id or a pod uid (`CGROUP_IDS`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct EnrichStr {
    pub len: u32,
    pub bytes: [u8; 64],
}

impl EnrichStr {
    pub const NONE: EnrichStr = EnrichStr {
        len: 0,
        bytes: [0; 64],
    };

    /// The first 64 bytes of `s`.
    pub fn of(s: &[u8]) -> EnrichStr {
        let mut e = EnrichStr::NONE;
        let n = s.len().min(64);
        e.bytes[..n].copy_from_slice(&s[..n]);
        e.len = n as u32;
        e
    }
}

/// Value of the `CGROUP_IDS` map (key: a cgroup v2 id, `bpf_get_current_cgroup_id`): what the
/// cgroup's path says of the container and pod its tasks run in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CgroupIds {
    pub container: EnrichStr,
    pub pod: EnrichStr,
}

/// Entries of `CGROUP_IDS`: cgroups that name a container or a pod.
pub const MAX_CGROUP_IDS: u32 = 16384;

/// [`Rule::group`]: what a count rule counts its matches by.
pub const GROUP_SERVICE: u8 = 1;
pub const GROUP_SEVERITY: u8 = 2;
pub const GROUP_EVENT: u8 = 3;
pub const GROUP_ATTR: u8 = 4;
/// Distinct `attributes.KEY` of `group_by` in one rule set, and rules with a `group_by`.
pub const MAX_GROUP_KEYS: usize = 8;
pub const MAX_GROUP_RULES: usize = 8;
/// Bytes of a group value kept; a longer value is cut to them (and shown with "…").
pub const MAX_GROUP_VALUE: usize = 64;
/// Grouped matches one request may carry (one note each, counted when it commits); more pass
/// the request through (`edit_limit`).
pub const MAX_GROUP_NOTES: usize = 4096;
/// Entries of the `GROUPS` map, over every rule; a new value that finds it full counts under
/// `__other__`.
pub const MAX_GROUP_ENTRIES: u32 = 16384;

/// [`GroupKey::kind`]: what the group value is.
pub const GV_STRING: u8 = 1;
/// An int64, its 8 bytes little-endian.
pub const GV_INT: u8 = 2;
/// A bool, one byte.
pub const GV_BOOL: u8 = 3;
/// A severity level, one byte: 0 UNSPECIFIED, 1 TRACE .. 6 FATAL.
pub const GV_LEVEL: u8 = 4;
/// `__missing__`: the record has no such value.
pub const GV_MISSING: u8 = 5;
/// `__other__`: past `max_groups`, or a value of another type.
pub const GV_OTHER: u8 = 6;
// (In `GROUPS` keys, ints and bools are [`GV_STRING`]s of their text, so that the int 503 and
// the string "503" are one group, as they are shown.)

/// One grouped match of a request, counted when the request commits: rule `rule` (index in the
/// set) matched a record whose group value is of `kind` ([`GV_STRING`]: the `b` bytes at
/// message offset `a`; [`GV_INT`]: `b << 32 | a`; [`GV_BOOL`], [`GV_LEVEL`]: `a`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GroupNote {
    pub a: u32,
    pub b: u32,
    pub rule: u8,
    pub kind: u8,
    pub _pad: u16,
}

/// The grouped matches of the request being walked, in socket storage (`GROUP_NOTES`) next to
/// its [`SockState`].
#[derive(Copy, Clone)]
#[repr(C)]
pub struct GroupNotes {
    pub n: u32,
    pub _pad: u32,
    /// Scratch: the `GROUPS` key being counted.
    pub key: GroupKey,
    pub notes: [GroupNote; MAX_GROUP_NOTES],
}

/// Key of the `GROUPS` map: a grouped rule's counter slot and a group value (value: the
/// matches counted under it, added to atomically).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct GroupKey {
    pub slot: u32,
    pub kind: u8,
    /// Bytes of `bytes` in use.
    pub len: u8,
    /// 1 when the value was longer than [`MAX_GROUP_VALUE`] and cut.
    pub cut: u8,
    pub _pad: u8,
    pub bytes: [u8; MAX_GROUP_VALUE],
}

impl GroupKey {
    pub const fn special(slot: u32, kind: u8) -> GroupKey {
        GroupKey {
            slot,
            kind,
            len: 0,
            cut: 0,
            _pad: 0,
            bytes: [0; MAX_GROUP_VALUE],
        }
    }
}

/// The severity level (0 UNSPECIFIED, 1 TRACE .. 6 FATAL) of a SeverityNumber as the walk keeps
/// it (out-of-range numbers are [`SEV_OUT_OF_RANGE`]).
#[inline(always)]
pub fn severity_level(sev: u32) -> u32 {
    if (1..=24).contains(&sev) {
        (sev - 1) / 4 + 1
    } else {
        0
    }
}

/// Whether `sev` is within a rule's severity range `lo..=hi` (`0..=255`: no condition).
#[inline(always)]
pub fn severity_in(sev: u32, lo: u8, hi: u8) -> bool {
    sev >= lo as u32 && sev <= hi as u32
}

/// Whether every condition bit a rule `needs` is among the bits a record or call `has`.
#[inline(always)]
pub fn has_all(has: u64, needs: u64) -> bool {
    has & needs == needs
}

/// Whether the states on (`states`: bits of state slots) are as a rule needs: every one of
/// `on`, none of `off`.
#[inline(always)]
pub fn states_hold(states: u64, on: u64, off: u64) -> bool {
    states & on == on && states & off == 0
}

/// [`Rule::first`] kinds: which of a record's condition bits the bit is among.
pub const FIRST_BODY: u8 = 1;
pub const FIRST_ATTRS: u8 = 2;
pub const FIRST_SERVICE: u8 = 3;

impl Rule {
    /// The [`Rule::first`] of a rule needing these bits: its lowest body bit, else attribute
    /// bit, else service bit.
    pub fn first_of(body: u64, attrs: u64, service: u64) -> u8 {
        let pick = |kind: u8, bits: u64| kind << 6 | bits.trailing_zeros() as u8;
        if body != 0 {
            pick(FIRST_BODY, body)
        } else if attrs != 0 {
            pick(FIRST_ATTRS, attrs)
        } else if service != 0 {
            pick(FIRST_SERVICE, service)
        } else {
            0
        }
    }

    /// Whether this OTLP rule matches a record with SeverityNumber `sev` and these condition
    /// bits, with the states `states` on. The uprobe hook's rules match the same way
    /// ([`crate::uprobe::ProbeRule::matches`]).
    #[inline(always)]
    pub fn matches(&self, sev: u32, body: u64, attrs: u64, service: u64, states: u64) -> bool {
        severity_in(sev, self.sev_lo, self.sev_hi)
            && has_all(body, self.body)
            && has_all(attrs, self.attrs)
            && has_all(service, self.service)
            && states_hold(states, self.state_on, self.state_off)
    }
}

impl RuleSet {
    pub const EMPTY: RuleSet = RuleSet {
        generation: 0,
        n_rules: 0,
        ac_states: 0,
        remove_keys: 0,
        needs: 0,
        enrich: 0,
        ac_first: [0; 4],
        states: 0,
        attr_key_lens: 0,
        redact_key_lens: 0,
        ac_skip: [0; 4],
        group_key_lens: 0,
        rules: [Rule {
            slot: 0,
            action: 0,
            sev_lo: 0,
            sev_hi: 0,
            flags: 0,
            recorder: 0,
            first: 0,
            group: 0,
            group_key: 0,
            max_groups: 0,
            _pad_group: 0,
            body: 0,
            attrs: 0,
            service: 0,
            remove: 0,
            param: 0,
            state_on: 0,
            state_off: 0,
            trigger: Trigger::NONE,
        }; MAX_RULES],
    };
}

/// Key of the `STRINGS` hash map, which maps a service name or an attribute key=value pair of a
/// rule set slot to the condition bits it sets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct StrKey {
    /// Rule set slot (0 or 1).
    pub slot: u8,
    /// [`STR_SERVICE`] or [`STR_ATTR`].
    pub kind: u8,
    /// Length of the attribute key (0 for a service name).
    pub klen: u8,
    pub _pad: u8,
    /// Length of the value.
    pub vlen: u32,
    /// Key bytes then value bytes; the rest is zero.
    pub bytes: [u8; STR_KEY_BYTES],
}

/// Key of the `ATTR_HASHES` hash map: a record attribute's key and value (or, for
/// [`STR_REDACT`], its key alone) by their [`str_hash`], for the record fast path's lookups,
/// which hash the bytes where they lie instead of building a [`StrKey`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HashKey {
    pub hash: u64,
    /// Rule set slot (0 or 1).
    pub slot: u8,
    /// [`STR_ATTR`] or [`STR_REDACT`].
    pub kind: u8,
    pub _pad0: u16,
    pub _pad1: u32,
}

/// Value of the `ATTR_HASHES` map: the condition bits, and the strings hashed, compared byte
/// for byte on a hit (two strings of one hash never both match).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct HashEntry {
    pub bits: u64,
    pub klen: u32,
    pub vlen: u32,
    /// Key bytes then value bytes, as in [`StrKey::bytes`].
    pub bytes: [u8; STR_KEY_BYTES],
}

/// FNV-1a, 64 bits: the hash of [`HashKey`], begun with [`str_hash_start`] and fed a byte at a
/// time with [`str_hash_byte`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The hash of a string pair begins with its kind and both lengths, so that where the key ends
/// and the value begins is part of it.
#[inline(always)]
pub fn str_hash_start(kind: u8, klen: u32, vlen: u32) -> u64 {
    let mut h = str_hash_byte(FNV_OFFSET, kind);
    h = str_hash_byte(h, klen as u8);
    h = str_hash_byte(h, vlen as u8);
    str_hash_byte(h, (vlen >> 8) as u8)
}

#[inline(always)]
pub fn str_hash_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// The whole hash of a key and value (the value empty for [`STR_REDACT`]).
pub fn str_hash(kind: u8, key: &[u8], value: &[u8]) -> u64 {
    let mut h = str_hash_start(kind, key.len() as u32, value.len() as u32);
    for &b in key.iter().chain(value) {
        h = str_hash_byte(h, b);
    }
    h
}

impl HashEntry {
    /// The `ATTR_HASHES` entry of a [`StrKey`] of kind [`STR_ATTR`] or [`STR_REDACT`], with its
    /// bits.
    pub fn of(key: &StrKey, bits: u64) -> (HashKey, HashEntry) {
        let (k, v) = (key.klen as usize, key.vlen as usize);
        let hk = HashKey {
            hash: str_hash(key.kind, &key.bytes[..k], &key.bytes[k..k + v]),
            slot: key.slot,
            kind: key.kind,
            _pad0: 0,
            _pad1: 0,
        };
        let he = HashEntry {
            bits,
            klen: k as u32,
            vlen: v as u32,
            bytes: key.bytes,
        };
        (hk, he)
    }
}

pub const STR_SERVICE: u8 = 1;
pub const STR_ATTR: u8 = 2;
/// An attribute name alone (klen = its length, vlen = 0) → bits of the redact rules' removal
/// names it equals.
pub const STR_REDACT: u8 = 3;
/// An attribute key and an `int_value` (the value: its 8 bytes, little-endian).
pub const STR_ATTR_INT: u8 = 4;
/// An attribute key and a `bool_value` (the value: one byte, 0 or 1).
pub const STR_ATTR_BOOL: u8 = 5;
/// A record's `event_name` (klen 0, the value: its bytes). Its bits are `attrs` bits.
pub const STR_EVENT: u8 = 6;
/// An attribute name alone → bits of the `group_by` keys (indexes) it equals.
pub const STR_GROUP: u8 = 7;
/// A resource attribute name alone → the `ENRICH_*` bit of the key it is, among those
/// `[enrich]` adds.
pub const STR_ENRICH: u8 = 8;

/// Whether strings of `kind` are also in `ATTR_HASHES`, for the record fast path's lookups:
/// attribute pairs of every value type, and removal names.
pub fn hashed_kind(kind: u8) -> bool {
    matches!(
        kind,
        STR_ATTR | STR_ATTR_INT | STR_ATTR_BOOL | STR_REDACT | STR_GROUP
    )
}

impl StrKey {
    pub const ZERO: StrKey = StrKey {
        slot: 0,
        kind: 0,
        klen: 0,
        _pad: 0,
        vlen: 0,
        bytes: [0; STR_KEY_BYTES],
    };
}

/// One Aho-Corasick state of the `AC` array (index `slot * MAX_AC_STATES + state`): the bits of
/// the needles that end here, and the next state for every byte.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct AcRow {
    pub out: u64,
    pub next: [u16; 256],
}

/// A rule set's Aho-Corasick automaton flattened into one `AC_FLAT` entry (index: the slot), as
/// the walk's body scan reads it: a byte costs one load. `next[state << 8 | byte]` is the next
/// state, with [`AC_OUT`] set when that state ends needles (their bits in `out[state]`).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct AcTable {
    pub out: [u64; MAX_AC_STATES as usize],
    pub next: [u16; MAX_AC_STATES as usize * 256],
}

/// The flag of an [`AcTable::next`] entry whose state ends needles.
pub const AC_OUT: u16 = 0x8000;

impl AcTable {
    /// Fills a zeroed table from the automaton's rows.
    pub fn fill(&mut self, rows: &[AcRow]) {
        for (s, row) in rows.iter().enumerate().take(MAX_AC_STATES as usize) {
            self.out[s] = row.out;
            for (b, &n) in row.next.iter().enumerate() {
                let ends = rows.get(n as usize).is_some_and(|r| r.out != 0);
                self.next[s << 8 | b] = n | if ends { AC_OUT } else { 0 };
            }
        }
    }
}

/// The single entry of the `CONTROL` array.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Control {
    /// `generation << 1 | slot`: written as one aligned u64 so a flip is atomic.
    pub active: u64,
    /// 1 = rules are evaluated; 0 = the rip cord: every request passes untouched.
    pub enabled: u32,
    /// [`LAYOUT_VERSION`] of the agent that created the maps.
    pub layout: u32,
    /// Requests whose whole length is larger than this pass through as `oversize`.
    pub max_request: u32,
    /// Why the rip cord is pulled, while it is: an `OFF_*` code (0 before it was recorded).
    /// Only the agents read it, so that an agent adopting pins, and `stats` read from them,
    /// say why.
    pub off_why: u32,
}

/// [`Control::off_why`]: `dt-agent disable`.
pub const OFF_BY_HAND: u32 = 1;
/// [`Control::off_why`]: the cost ceiling was exceeded.
pub const OFF_BY_CEILING: u32 = 2;
/// [`Control::off_why`]: the agent is stopping or uninstalling (the drain before detaching).
pub const OFF_STOPPING: u32 = 3;

impl Control {
    pub fn active_slot(&self) -> u32 {
        (self.active & 1) as u32
    }
    pub fn active_generation(&self) -> u64 {
        self.active >> 1
    }
    pub fn pack(generation: u64, slot: u32) -> u64 {
        (generation << 1) | (slot as u64 & 1)
    }
}

/// Key of the `NAMES` map: a rule name, zero-padded.
pub type NameKey = [u8; MAX_NAME_LEN];

/// Value of the `NAMES` map, the agent's name→counter-slot table. It lives in a (pinned) map so
/// that a restarted agent, or `stats` with no agent, can read it back; the kernel programs never
/// read it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NameEntry {
    pub slot: u32,
    /// The rule's action (`ACTION_*`).
    pub action: u8,
    /// 1 while the rule is in the active rule set.
    pub active: u8,
    pub _pad: u16,
}

// ------------------------------------------------------------------------------------------
// Counters (per CPU; userspace sums them over every possible CPU)

/// Per-rule counters, in the `RULE_COUNTERS` per-CPU array indexed by slot.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RuleCounters {
    pub matched: u64,
    pub kept: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub redacted: u64,
}

/// Why a request left untouched. Index into [`Totals::passthrough`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Passthrough {
    Compressed = 0,
    Json = 1,
    Chunked = 2,
    NotLogs = 3,
    Oversize = 4,
    Partial = 5,
    Malformed = 6,
    Disabled = 7,
    Other = 8,
    PullFailed = 9,
    ExpectContinue = 10,
    Generation = 11,
    EditLimit = 12,
    BadHttp = 13,
    NoRules = 14,
    TooDeep = 15,
    Enrich = 16,
}

pub const N_PASSTHROUGH: usize = 17;

impl Passthrough {
    /// Every reason, in index order, with the key used in `stats --json`.
    pub const ALL: [(Passthrough, &'static str); 17] = [
        (Passthrough::Compressed, "compressed"),
        (Passthrough::Json, "json"),
        (Passthrough::Chunked, "chunked"),
        (Passthrough::NotLogs, "not_logs"),
        (Passthrough::Oversize, "oversize"),
        (Passthrough::Partial, "partial"),
        (Passthrough::Malformed, "malformed"),
        (Passthrough::Disabled, "disabled"),
        (Passthrough::Other, "other"),
        (Passthrough::PullFailed, "pull_failed"),
        (Passthrough::ExpectContinue, "expect_continue"),
        (Passthrough::Generation, "generation"),
        (Passthrough::EditLimit, "edit_limit"),
        (Passthrough::BadHttp, "bad_http"),
        (Passthrough::NoRules, "no_rules"),
        (Passthrough::TooDeep, "too_deep"),
        (Passthrough::Enrich, "enrich"),
    ];
}

/// Whole-path counters, the single entry of the `TOTALS` per-CPU array.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Totals {
    /// Connections put into the SockHash by sock_ops.
    pub connections: u64,
    /// HTTP requests seen on hooked connections.
    pub requests: u64,
    /// Requests walked as OTLP/HTTP protobuf `/v1/logs`.
    pub log_requests: u64,
    /// Log records in walked requests.
    pub records: u64,
    pub records_dropped: u64,
    /// HTTP bytes before and after edits, heads included.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Edits the kernel could not make: pops it refused (ENOMEM; those records were kept and
    /// uncounted as dropped), and `[enrich]` inserts that did not fit or were refused (that
    /// ResourceLogs went without).
    pub edit_failures: u64,
    /// Bytes sent on connections that stopped being followed (chunked, bad HTTP).
    pub untracked_bytes: u64,
    /// Requests (or request heads) corked, and corked requests no longer held: the program has
    /// since run on them in full (or in part), or their connection closed first. While the sums
    /// differ, requests are held in the kernel; an agent that detaches waits for them.
    pub corked: u64,
    pub uncorked: u64,
    pub passthrough: [u64; N_PASSTHROUGH],
    /// Held requests whose connection closed (or shut down for writing) before the rest came;
    /// also counted in `uncorked`.
    pub released: u64,
    /// Walk steps (`bpf_loop` iterations of the walk) of the requests walked and committed:
    /// with `records`, the steps per record.
    pub walk_steps: u64,
    /// Records of those requests the walk's fast path took whole (one step each, not one a
    /// field).
    pub fast_records: u64,
}

// ------------------------------------------------------------------------------------------
// Per-socket state (socket storage)

/// Per-connection state, kept in socket storage (`SOCK_STATE`): sendmsg on one socket is
/// serialised by the socket lock, so this doubles as the walk's scratch space.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct SockState {
    /// [`PHASE_IDLE`], [`PHASE_CORKED`] or [`PHASE_UNTRACKED`].
    pub phase: u32,
    /// Rule set slot captured when the current request was first seen.
    pub slot: u32,
    /// Generation captured with `slot`.
    pub generation: u64,
    /// The corked request: its head and whole length, and where its Content-Length digits are.
    pub head_len: u32,
    pub total: u32,
    pub cl_off: u32,
    pub cl_digits: u32,
    /// The readable window of the message being looked at (kernel side), kept here rather than
    /// on the BPF stack so that the verifier sees it as opaque map memory.
    pub win: WinState,
    /// The request head being parsed.
    pub head: crate::http::Head,
    /// The chunk framing of a chunked request being corked.
    pub chunk: crate::chunked::Chunked,
    /// The body the walk reads: right after the head, or a chunked request's one data chunk.
    pub body_start: u32,
    pub body_end: u32,
    /// 1 when `cl_off`/`cl_digits` are the chunk's size digits (hex).
    pub cl_hex: u32,
    /// 1 when the request is chunked with several data chunks: it is walked rewritten as one
    /// chunk (its bytes as sent kept in a [`Rebody`] buffer), with the data at
    /// `body_start..body_end` and a size line of `cl_digits` hex digits at `cl_off`.
    pub multi: u32,
    /// A copy between the message and a [`Rebody`] buffer, one piece per step.
    pub copy: CopyState,
    pub walk: crate::walk::Walk,
    /// The recording pass over the dropped records, once the request commits.
    pub rec: RecPass,
    /// The socket's cookie (set by sock_ops when it hooks the connection): the key of its
    /// [`Held`] entry while a request is held. sk_msg cannot read the cookie itself.
    pub cookie: u64,
}

/// A copy in progress between the message (`msg`) and a [`Rebody`] buffer (`buf`): `len`
/// bytes left. `scan`: the copy out follows the chunk framing in the buffer (see dt-ebpf's
/// `sk_msg/rechunk.rs`).
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct CopyState {
    pub msg: u32,
    pub buf: u32,
    pub len: u32,
    pub failed: u32,
    pub scan: u32,
    pub _pad: u32,
}

/// The recording pass (dt-ebpf's `sk_msg/record.rs`): the edit and record it is at, and the
/// ring entry being written (`base`: its stream position, `n` bytes; `at`: where the next
/// byte goes; `left` bytes from message offset `src` still to copy).
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct RecPass {
    pub edit: u32,
    pub pos: u32,
    pub end: u32,
    pub phase: u32,
    pub recorder: u32,
    pub rule_slot: u32,
    pub svc_off: u32,
    pub svc_len: u32,
    pub rec_off: u32,
    pub rec_len: u32,
    pub src: u32,
    pub left: u32,
    pub size: u64,
    pub base: u64,
    pub at: u64,
    pub n: u64,
}

/// Buffers for chunked requests of several data chunks, one taken per request walked (by CPU
/// number, `busy` set with a compare-exchange): the request's bytes after its head, as sent,
/// while it is rewritten as one chunk to be walked.
pub const REBODY_SLOTS: u32 = 8;
/// Data bytes a [`Rebody`] holds: a whole request at the size ceiling.
pub const REBODY_BYTES: u32 = MAX_REQUEST_CEILING;
/// Bytes one copy step moves into a [`Rebody`] at most.
pub const REBODY_PIECE: u32 = 8192;

/// One buffer of the `REBODY` array. `bytes` has [`REBODY_PIECE`] bytes to spare past
/// [`REBODY_BYTES`], so a copy at a masked offset stays inside it.
#[repr(C)]
pub struct Rebody {
    pub busy: u32,
    pub _pad: u32,
    pub bytes: [u8; (REBODY_BYTES + REBODY_PIECE) as usize],
}

/// Bounds of the readable window of a message: `start..end` is pulled, nothing at or past
/// `limit` may be.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct WinState {
    pub start: u32,
    pub end: u32,
    pub limit: u32,
    pub failed: u32,
}

pub const PHASE_IDLE: u32 = 0;
pub const PHASE_CORKED: u32 = 1;
pub const PHASE_UNTRACKED: u32 = 2;
/// The head of the next request is not all here yet: its bytes are corked until it is.
pub const PHASE_HEAD: u32 = 3;
/// A chunked request is being corked, its framing scanned step by step.
pub const PHASE_CHUNKED: u32 = 4;
/// A chunked request dt does not walk (the rip cord pulled, no rules, not logs, ...) is
/// passing: each piece passes as it comes, and its framing is followed across them, so that the
/// next request on the connection is found and followed again.
pub const PHASE_CHUNK_PASS: u32 = 5;

/// Entries of the `HELD` map (one per socket at most).
pub const MAX_HELD: u32 = 65535;

/// A request held in the kernel (corked), in the `HELD` hash map keyed by socket cookie: who
/// sent it and since when, so that an agent waiting to detach can say whom it waits for. The
/// entry goes when the program runs on the request, or when its connection closes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Held {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the request was corked.
    pub since_ns: u64,
    /// `bpf_get_current_pid_tgid` of the sender: tgid in the upper 32 bits.
    pub pid_tgid: u64,
    /// Bytes corked for: the whole request, or (while its head is incomplete) one more than
    /// what is here.
    pub total: u32,
    /// Ports of the connection, host byte order.
    pub local_port: u32,
    pub remote_port: u32,
    /// [`PHASE_CORKED`] (a whole request) or [`PHASE_HEAD`] (an incomplete head).
    pub phase: u32,
}

// ------------------------------------------------------------------------------------------
// States and triggers

/// State slots (one bit each in the rules' words). A slot belongs to a state's name.
pub const MAX_STATES: u32 = 64;

// Maps: `STATES` (`Array<u64>`, [`MAX_STATES`]): until when (`bpf_ktime_get_ns`) each state
// is on (0: off); `STATE_DURATIONS` (`Array<u64>`): how long a firing turns it on, in ns;
// `TRIGGERS` (`Array<TriggerState>`, `MAX_SLOTS`): each trigger rule's firing state, by
// counter slot.

/// The firing state of one trigger rule (`TRIGGERS[counter slot]`), shared by every CPU and
/// changed only with compare-exchange, so that concurrent matches fire once.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TriggerState {
    /// `bpf_ktime_get_ns` of the last firing (0: never fired).
    pub last_ns: u64,
    /// The threshold window: `opened_ms << 24 | matches` (see [`crate::decide::threshold_count`]).
    pub window: u64,
    /// Firings so far.
    pub fired: u64,
}

// ------------------------------------------------------------------------------------------
// Recorders

/// Recorder slots (one bit each in [`Trigger::flush`]). A slot belongs to a recorder's name.
pub const MAX_RECORDERS: u32 = 16;
/// Bytes of one block of a recorder's ring (an element of its inner array map).
pub const RING_BLOCK: u32 = 4096;
/// Bytes copied into a ring per step at most; each element has this much to spare past
/// [`RING_BLOCK`], so a copy at a masked offset stays inside it.
pub const RING_PIECE: u32 = 256;
/// Bytes of a ring entry's header (three u64 words) and trailer (one).
pub const ENTRY_HEADER: u32 = 24;
pub const ENTRY_TRAILER: u32 = 8;
/// Largest `max_record`.
pub const MAX_RECORD_CEILING: u32 = 65536;
/// Longest service name kept with a recorded record (a longer one is cut).
pub const MAX_RECORD_SERVICE: u32 = 255;

/// One element of a recorder's ring: [`RING_BLOCK`] bytes of the ring, then room for a copy
/// that starts near the end (never read).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct RingBlock {
    pub bytes: [u8; (RING_BLOCK + RING_PIECE) as usize],
}

/// Bytes a recorded record takes in its ring: header, service name, record, padding to 8,
/// trailer. (The README's "Recorders" gives this formula.)
#[inline(always)]
pub const fn entry_len(svc_len: u32, rec_len: u32) -> u32 {
    (ENTRY_HEADER + svc_len + rec_len).div_ceil(8) * 8 + ENTRY_TRAILER
}

/// The kernel-written state of a recorder (`REC_STATE[recorder slot]`): where its ring's next
/// entry goes, as a position in the stream of every byte ever reserved (an entry at stream
/// position `p` is at ring byte `p % size`), and the flushes its triggers asked for.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RecState {
    pub head: u64,
    pub flush_req: u64,
}

/// Per-CPU counters of a recorder (`REC_COUNTERS[recorder slot]`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RecCounters {
    /// Records written into the ring, and the ring bytes they took.
    pub records: u64,
    pub bytes: u64,
    /// Records longer than `max_record`, not recorded.
    pub too_long: u64,
    /// Records not recorded for another reason: a redact rule matched them (a copy would leave
    /// unredacted), the ring missing (the recorder was just removed), a reservation lost to
    /// other CPUs, or the message unreadable.
    pub lost: u64,
}

/// The agent-written side of a recorder (`REC_CONF[recorder slot]`). The kernel reads
/// `size` and `max_record` only.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RecConf {
    /// Ring bytes (a multiple of [`RING_BLOCK`]); 0: no recorder in this slot.
    pub size: u64,
    pub max_record: u32,
    pub _pad: u32,
    /// Stream position up to which records have left the ring (flushed).
    pub tail: u64,
    /// The `flush_req` value last served.
    pub flush_done: u64,
    /// Flushes done and the records they egressed; flushes given up (the endpoint failed
    /// every try: their records stay in the ring).
    pub flushes: u64,
    pub flushed_records: u64,
    pub flush_failures: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for StrKey {}
    unsafe impl aya::Pod for AcRow {}
    unsafe impl aya::Pod for AcTable {}
    unsafe impl aya::Pod for HashKey {}
    unsafe impl aya::Pod for HashEntry {}
    unsafe impl aya::Pod for Control {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for Totals {}
    unsafe impl aya::Pod for NameEntry {}
    unsafe impl aya::Pod for Held {}
    unsafe impl aya::Pod for TriggerState {}
    unsafe impl aya::Pod for RecState {}
    unsafe impl aya::Pod for RecCounters {}
    unsafe impl aya::Pod for RecConf {}
    unsafe impl aya::Pod for RingBlock {}
    unsafe impl aya::Pod for GroupKey {}
    unsafe impl aya::Pod for EnrichStr {}
    unsafe impl aya::Pod for CgroupIds {}
    unsafe impl aya::Pod for GroupNotes {}
}
