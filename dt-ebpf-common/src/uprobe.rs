//! The uprobe hook's map layout: what the agent writes for `dt_uprobe` (dt-ebpf's `uprobe.rs`)
//! and what the program hands back (counters, captured events).
//!
//! One program, `dt_uprobe`, is attached once per probed function (an *entry*). Each attachment
//! carries a BPF cookie, the entry's id, which indexes the `PROBE_ENTRIES` array of the active
//! rule set slot: `PROBE_ENTRIES[slot * MAX_PROBE_ENTRIES + id]`. An entry says how to read the
//! call's arguments and which probe (an index into the rule set's probe list) it belongs to. A
//! `[[probe]]` with `preset = "syslog"` is one probe with up to four entries (`syslog`,
//! `__syslog_chk`, `vsyslog`, `__vsyslog_chk`).
//!
//! The rules of uprobe hooks are their own small rule set, `PROBE_RULES[slot]`, double-buffered
//! and flipped together with the OTLP rule set by the one write to `CONTROL.active`: a slot's
//! `ProbeRuleSet` and entries are used only while their `generation` equals the active one.
//!
//! Part of the map layout versioned by `LAYOUT_VERSION` (see [`crate::layout`]).

/// Rules of uprobe hooks in one rule set (a rule listing several uprobe hooks takes one each).
pub const MAX_PROBE_RULES: usize = 64;
/// Distinct probes one rule set uses (one bit each in [`ProbeRule::probes`]).
pub const MAX_PROBES: usize = 64;
/// Attached functions at once, over every probe (the cookie space).
pub const MAX_PROBE_ENTRIES: u32 = 256;
/// Functions of one probe whose calls into each other are not counted again (a preset family).
pub const MAX_FAMILY: usize = 4;
/// Value → severity pairs of one probe's `severity_map`.
pub const MAX_SEV_PAIRS: usize = 16;
/// Bytes of a message read from the probed call, its terminating NUL included: a message is at
/// most `PROBE_MSG_LEN - 1` bytes; longer ones are cut there and flagged [`EV_TRUNCATED`].
pub const PROBE_MSG_LEN: usize = 256;
/// Bytes of the `PROBE_EVENTS` ring buffer (a power-of-two number of pages).
pub const PROBE_RING_BYTES: u32 = 1 << 20;
/// Highest argument index a probe can read (the six integer argument registers of x86-64).
pub const MAX_PROBE_ARG: u8 = 5;
/// "No such argument" in [`ProbeEntry`]'s argument fields.
pub const ARG_NONE: u8 = 255;
/// Slots of the per-thread tail-call marker table (LRU).
pub const PROBE_TAIL_ENTRIES: u32 = 8192;
/// Longest process name the kernel keeps (`TASK_COMM_LEN`, NUL included).
pub const COMM_LEN: usize = 16;

/// One rule of a uprobe hook. A call matches when its probe's bit is in `probes`, its severity is
/// in `sev_lo..=sev_hi`, and every bit of `body` and `service` is set in the call's words.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ProbeRule {
    /// Counter slot (index into `RULE_COUNTERS`), shared with the rule's other hooks.
    pub slot: u16,
    /// `ACTION_COUNT`, `ACTION_CAPTURE` or `ACTION_DROP`.
    pub action: u8,
    pub sev_lo: u8,
    pub sev_hi: u8,
    pub _pad: [u8; 3],
    /// Bits of the probes (indexes into the rule set's probe list) this rule hooks.
    pub probes: u64,
    /// Bits of `body_contains` needles (the rule set's Aho-Corasick outputs).
    pub body: u64,
    /// Bits of `service` values.
    pub service: u64,
    /// States that must be on, and off (as [`crate::Rule::state_on`]).
    pub state_on: u64,
    pub state_off: u64,
    /// A trigger rule's firing.
    pub trigger: crate::Trigger,
}

/// The uprobe rules of one rule set slot (`PROBE_RULES[slot]`).
#[derive(Copy, Clone)]
#[repr(C)]
pub struct ProbeRuleSet {
    /// Generation of this slot's contents; 0 while the agent rewrites it.
    pub generation: u64,
    pub n_rules: u32,
    /// [`PRS_BODY`]: some rule needs `body_contains` bits (the message is scanned).
    pub flags: u32,
    /// Bits of the states some rule's match names.
    pub states: u64,
    pub rules: [ProbeRule; MAX_PROBE_RULES],
}

/// [`ProbeRuleSet::flags`]: scan messages with the slot's Aho-Corasick automaton.
pub const PRS_BODY: u32 = 1;
/// [`ProbeRuleSet::flags`]: some rule captures. Without this flag or [`PRS_BODY`], no rule
/// looks at the message and it is not read.
pub const PRS_CAPTURE: u32 = 2;

impl ProbeRule {
    /// Whether this rule matches a call of the probe whose bit is `probe_bit`, with severity
    /// `sev` and these condition bits; the same test as an OTLP rule's
    /// ([`crate::Rule::matches`]), plus the probe.
    #[inline(always)]
    pub fn matches(&self, probe_bit: u64, sev: u8, body: u64, service: u64, states: u64) -> bool {
        self.probes & probe_bit != 0
            && crate::severity_in(sev as u32, self.sev_lo, self.sev_hi)
            && crate::has_all(body, self.body)
            && crate::has_all(service, self.service)
            && crate::states_hold(states, self.state_on, self.state_off)
    }
}

impl ProbeRuleSet {
    pub const EMPTY: ProbeRuleSet = ProbeRuleSet {
        generation: 0,
        n_rules: 0,
        flags: 0,
        states: 0,
        rules: [ProbeRule {
            slot: 0,
            action: 0,
            sev_lo: 0,
            sev_hi: 0,
            _pad: [0; 3],
            probes: 0,
            body: 0,
            service: 0,
            state_on: 0,
            state_off: 0,
            trigger: crate::Trigger::NONE,
        }; MAX_PROBE_RULES],
    };
}

/// `[start, end)` in the probed file's ELF virtual addresses.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct AddrRange {
    pub start: u64,
    pub end: u64,
}

/// One `severity_map` pair: an argument value and its OTLP SeverityNumber.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SevPair {
    pub value: i32,
    pub severity: u8,
    pub _pad: [u8; 3],
}

/// Severity is `sev_default` (no argument read).
pub const SEV_CONST: u8 = 0;
/// Severity is looked up: the argument (low 32 bits, signed), masked with `sev_mask` when that
/// is not 0, is compared with each pair; no pair: `sev_default`.
pub const SEV_TABLE: u8 = 1;
/// The argument is an OTLP SeverityNumber itself: 1-24 as is, anything else 0.
pub const SEV_DIRECT: u8 = 2;

/// How one attached function's calls are read, for one rule set slot
/// (`PROBE_ENTRIES[slot * MAX_PROBE_ENTRIES + id]`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ProbeEntry {
    /// The entry is valid while this is the active generation.
    pub generation: u64,
    /// The function's ELF virtual address: the program's run-time address, less this, rounded to
    /// a page, is the file's load bias.
    pub sym_addr: u64,
    /// The probe's family: a call returning into one of these functions is a call the library
    /// makes itself, already counted at the application's call (unused ranges are empty).
    pub ranges: [AddrRange; MAX_FAMILY],
    /// The probe's `service` bits, when it names a service ([`ENTRY_STATIC_SERVICE`]).
    pub service_bits: u64,
    /// Index of the probe in the rule set's probe list (< [`MAX_PROBES`]).
    pub probe: u8,
    /// Argument indexes (0..=[`MAX_PROBE_ARG`] or [`ARG_NONE`]): the severity; the message
    /// (`char *`); when the message is exactly `"%s"`, the `char *` that replaces it, or the
    /// `va_list` whose first argument replaces it.
    pub sev_arg: u8,
    pub msg_arg: u8,
    pub str_arg: u8,
    pub va_arg: u8,
    /// [`SEV_CONST`], [`SEV_TABLE`] or [`SEV_DIRECT`].
    pub sev_mode: u8,
    pub sev_default: u8,
    pub n_pairs: u8,
    pub sev_mask: u32,
    /// [`ENTRY_STATIC_SERVICE`].
    pub flags: u32,
    pub pairs: [SevPair; MAX_SEV_PAIRS],
}

/// [`ProbeEntry::flags`]: the probe names its service; otherwise the service is the calling
/// process's name (comm), looked up in `PROBE_COMMS`.
pub const ENTRY_STATIC_SERVICE: u32 = 1;

/// Key of `PROBE_COMMS`: a process name (zero-padded) that equals a rule's `service`, per slot.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CommKey {
    pub slot: u32,
    pub comm: [u8; COMM_LEN],
}

/// Value of `PROBE_TAILS` (key: `pid_tgid`): the last call a thread made into a probed function.
/// A probed function that jumps into another of its family (a tail call) shows the same stack
/// pointer and return address at both entries; the second is not counted.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TailMark {
    pub sp: u64,
    pub ra: u64,
    pub entry: u32,
    pub probe: u32,
}

/// One captured call, as it goes through the `PROBE_EVENTS` ring buffer.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct ProbeEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the call.
    pub time_ns: u64,
    /// Process id (tgid) in the high 32 bits, thread id in the low 32.
    pub pid_tgid: u64,
    /// The entry (cookie) the call came through.
    pub entry: u32,
    /// Bytes of `msg` before its NUL.
    pub msg_len: u16,
    /// OTLP SeverityNumber (0 = unspecified).
    pub severity: u8,
    /// [`EV_TRUNCATED`], [`EV_UNREADABLE`], [`EV_FROM_ARG`].
    pub flags: u8,
    /// The calling thread's name, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The message, NUL-terminated.
    pub msg: [u8; PROBE_MSG_LEN],
}

/// The message filled the buffer: it was cut at `PROBE_MSG_LEN - 1` bytes.
pub const EV_TRUNCATED: u8 = 1;
/// The message pointer could not be read (NULL, unmapped): the message is empty.
pub const EV_UNREADABLE: u8 = 2;
/// The format was `"%s"`: the message is the argument it prints.
pub const EV_FROM_ARG: u8 = 4;

/// Whole-hook counters, the single entry of the `PROBE_TOTALS` per-CPU array.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ProbeTotals {
    /// Calls evaluated against the rules (each application call once).
    pub calls: u64,
    /// Hits that were calls a probed function made into its own family (nested or tail calls),
    /// not evaluated again.
    pub nested: u64,
    /// Calls whose message could not be read.
    pub unreadable: u64,
    /// Calls whose message was cut at the bound.
    pub truncated: u64,
    /// Calls that capture rules matched and that went into the ring buffer.
    pub captured: u64,
    /// Calls that capture rules matched but that the full ring buffer refused.
    pub capture_lost: u64,
}

/// The sleepable uprobe program's faults, per CPU (`PROBE_FAULTS`; not pinned: each agent's
/// own, as its uprobe program is).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeFaults {
    /// Message pages faulted in.
    pub pages: u64,
    /// Nanoseconds spent faulting them in, mostly waiting (a page read from disk): counted in
    /// the program's BPF run time, taken out of the cost ceiling's CPU time.
    pub ns: u64,
}

/// Who is evaluating a call on a CPU, and the calls that came meanwhile, per CPU (`PROBE_GUARD`;
/// not pinned: each agent's own, as its uprobe program is). A uprobe program runs with
/// migration off but can be preempted where the kernel preempts kernel code (`preempt=full` or
/// `lazy`); a call that comes on that CPU meanwhile finds the guard taken and is not evaluated
/// (it would share the CPU's scratch with the preempted one), but counted in `preempted`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeGuard {
    /// The evaluating thread's `pid_tgid`, or 0.
    pub owner: u64,
    /// Calls not evaluated: the guard was taken.
    pub preempted: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ProbeRule {}
    unsafe impl aya::Pod for ProbeRuleSet {}
    unsafe impl aya::Pod for ProbeEntry {}
    unsafe impl aya::Pod for CommKey {}
    unsafe impl aya::Pod for TailMark {}
    unsafe impl aya::Pod for ProbeEvent {}
    unsafe impl aya::Pod for ProbeTotals {}
    unsafe impl aya::Pod for ProbeFaults {}
    unsafe impl aya::Pod for ProbeGuard {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_have_no_hidden_padding() {
        assert_eq!(size_of::<crate::Trigger>(), 32);
        assert_eq!(size_of::<ProbeRule>(), 32 + 16 + 32);
        assert_eq!(size_of::<ProbeRuleSet>(), 24 + 80 * MAX_PROBE_RULES);
        assert_eq!(size_of::<SevPair>(), 8);
        assert_eq!(
            size_of::<ProbeEntry>(),
            16 + 16 * MAX_FAMILY + 8 + 8 + 8 + 8 * MAX_SEV_PAIRS
        );
        assert_eq!(size_of::<CommKey>(), 4 + COMM_LEN);
        assert_eq!(size_of::<ProbeEvent>(), 24 + COMM_LEN + PROBE_MSG_LEN);
        assert_eq!(size_of::<ProbeEvent>() % 8, 0);
        assert_eq!(size_of::<ProbeGuard>(), 16);
    }

    #[test]
    fn a_probe_rule_matches_like_an_otlp_rule_on_its_probes() {
        let rule = ProbeRule {
            probes: 0b10,
            sev_lo: 9,
            sev_hi: 12,
            body: 0b100,
            service: 0b1,
            ..ProbeRule::default()
        };
        let otlp = crate::Rule {
            sev_lo: 9,
            sev_hi: 12,
            body: 0b100,
            service: 0b1,
            ..crate::RuleSet::EMPTY.rules[0]
        };
        for sev in 0..=255u8 {
            for body in 0..8u64 {
                for service in 0..4u64 {
                    let want = otlp.matches(sev as u32, body, 0, service, 0);
                    assert_eq!(rule.matches(0b10, sev, body, service, 0), want);
                    assert!(!rule.matches(0b01, sev, body, service, 0));
                }
            }
        }
        assert!(rule.matches(0b10, 9, 0b111, 0b11, 0));
        assert!(!rule.matches(0b10, 13, 0b111, 0b11, 0));
        assert!(!rule.matches(0b10, 9, 0b011, 0b11, 0));
    }
}
