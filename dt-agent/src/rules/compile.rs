//! Compiling a rule set into the map contents the kernel reads.
//!
//! Conditions are deduplicated across the rule set: each distinct `body_contains` needle, each
//! distinct attribute `(key, value)` pair and each distinct `service` gets one bit in its
//! condition word. The walker sets a record's bits (needles through the Aho-Corasick automaton,
//! strings through the `STRINGS` map), and a rule matches when all of its bits are set.

use std::fmt;
use std::path::PathBuf;

use dt_ebpf_common::uprobe::{
    COMM_LEN, MAX_PROBE_RULES, MAX_PROBES, PRS_BODY, PRS_CAPTURE, ProbeRule, ProbeRuleSet,
};
use dt_ebpf_common::{
    AcRow, AcTable, ENRICH_KEYS, GROUP_ATTR, GROUP_EVENT, GROUP_SERVICE, GROUP_SEVERITY,
    MAX_AC_STATES, MAX_ATTR_KEY_LEN, MAX_ATTR_VALUE_LEN, MAX_EVENT_LEN, MAX_GROUP_KEYS,
    MAX_GROUP_RULES, MAX_NEEDLE_LEN, MAX_RATE, MAX_RECORDERS, MAX_RULES, MAX_SERVICE_LEN,
    MAX_SLOTS, MAX_STATES, NEED_EVENT, NEED_GROUPS, NEED_SCAN_SKIP, NEED_SCAN_WORDS,
    RULE_MASK_BODY, Rule, RuleSet, StrKey, Trigger, key_len_bit,
};

use super::ac::{AcBuilder, TooManyStates};
use super::bits::{
    Cond, CondBits, TooManyConds, attribute_key, enrich_key, event_key, group_key, needs,
    remove_key, service_key,
};
use super::diag::{Diagnostic, Pos};
use super::model::{
    Action, ActionKind, At, AttrValue, GroupBy, Hook, ProbeDef, RecorderDef, RuleDef, RuleSource,
    StateDef,
};
use super::slots::{ObjectSlots, SlotTable};

/// One rule of a compiled rule set on one hook, in evaluation order: the `otlp` ones are
/// `ruleset.rules` in order, the uprobe ones `uprobe.rules.rules` in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub name: String,
    pub action: ActionKind,
    pub hook: Hook,
    /// Where the rule is defined: its file and the line of its `[[rule]]` header.
    pub file: PathBuf,
    pub line: usize,
    /// Its counter slot.
    pub slot: u16,
    /// A count rule's `group_by` (as written) and `max_groups`.
    pub group_by: Option<(String, u32)>,
}

/// A compiled rule set: everything the kernel needs to evaluate it.
#[derive(Clone)]
pub struct Compiled {
    pub rules: Vec<CompiledRule>,
    /// The `RULESETS` entry (generation 0: the agent stamps the generation when it installs it).
    pub ruleset: RuleSet,
    /// The `STRINGS` entries (with rule set slot 0): service names and attribute pairs, each
    /// with the condition bits it sets.
    pub strings: Vec<(StrKey, u64)>,
    /// The `AC` rows, row `i` being state `i`; empty when no rule uses `body_contains`.
    pub ac: Vec<AcRow>,
    /// The uprobe hooks: their rules and the probes they use.
    pub uprobe: UprobeSet,
    /// The set's recorders and states, with their slots.
    pub recorders: Vec<CompiledRecorder>,
    pub states: Vec<CompiledState>,
    /// How long a firing turns each state slot on, in ns (`STATE_DURATIONS`).
    pub state_durations: [u64; MAX_STATES as usize],
}

/// A recorder of a compiled set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRecorder {
    pub name: String,
    pub slot: u8,
    pub size: u64,
    pub max_record: u32,
    /// Where it is defined (a recorder needs a capture endpoint: checked by the agent).
    pub file: PathBuf,
    pub pos: Pos,
}

/// A state of a compiled set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledState {
    pub name: String,
    pub slot: u8,
    pub duration: std::time::Duration,
}

/// The uprobe part of a compiled rule set. What the probes attach to is resolved on the host
/// that installs it (`crate::hooks::uprobe`).
#[derive(Clone)]
pub struct UprobeSet {
    /// The `PROBE_RULES` entry (generation 0; the agent stamps it).
    pub rules: ProbeRuleSet,
    /// The probes the rules hook, index `i` being the probe bit `1 << i`.
    pub probes: Vec<CompiledProbe>,
    /// `PROBE_COMMS` entries (slot 0): each `service` value short enough to be a process name,
    /// zero-padded, with its service bits.
    pub comms: Vec<([u8; COMM_LEN], u64)>,
    /// Rules whose action the kernel may not support at a uprobe: `drop` (checked at install).
    pub drops: Vec<HookUse>,
    /// Rules that capture (they need a capture endpoint).
    pub captures: Vec<HookUse>,
}

impl UprobeSet {
    fn empty() -> UprobeSet {
        UprobeSet {
            rules: ProbeRuleSet::EMPTY,
            probes: Vec::new(),
            comms: Vec::new(),
            drops: Vec::new(),
            captures: Vec::new(),
        }
    }
}

/// A probe of the rule set and its precomputed condition bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledProbe {
    pub def: ProbeDef,
    /// The bits of its `service` (0 without one, or when no rule names it).
    pub service_bits: u64,
}

/// A rule on a uprobe hook, for install-time checks: where its action is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookUse {
    pub file: PathBuf,
    pub pos: Pos,
    pub rule: String,
    /// `"uprobe:NAME"`.
    pub hook: String,
}

impl Compiled {
    /// The automaton flattened, as the `AC_FLAT` map holds it.
    pub fn ac_table(&self) -> Box<AcTable> {
        // SAFETY: `AcTable` is integers only; all zeroes is valid.
        let mut t = unsafe { Box::<AcTable>::new_zeroed().assume_init() };
        t.fill(&self.ac);
        t
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = (self.ruleset.n_rules as usize).min(MAX_RULES);
        f.debug_struct("Compiled")
            .field("rules", &self.rules)
            .field("kernel_rules", &&self.ruleset.rules[..n])
            .field("strings", &self.strings.len())
            .field("ac_states", &self.ruleset.ac_states)
            .field("uprobe_rules", &self.uprobe.rules.n_rules)
            .field("probes", &self.uprobe.probes)
            .finish()
    }
}

/// Compiles `defs` (in evaluation order, names unique: one [`load_dir`](super::load_dir) or
/// [`load_files`](super::load_files) result) for the kernel, assigning counter slots from
/// `slots`.
///
/// Every problem is reported: the kernel's limits (see `dt_ebpf_common::layout`), counter slots
/// running out, and actions the kernel cannot run yet. `slots` is only updated on success, so a
/// rejected rule set leaves no trace.
pub fn compile<D: RuleSource + ?Sized>(
    defs: &D,
    slots: &mut SlotTable,
) -> Result<Compiled, Vec<Diagnostic>> {
    let mut table = slots.clone();
    // A name of this set is never taken back, even when its rule was removed before.
    for def in defs.rules() {
        table.retired.retain(|n| n != &def.name.value);
    }
    let mut compiler = Compiler::new(table);
    compiler.objects(defs.recorders(), defs.states());
    for def in defs.rules() {
        compiler.rule(def);
    }
    let (mut compiled, new_slots) = compiler.finish()?;
    if let Some(e) = defs.enrich() {
        compiled.ruleset.enrich = e.attrs;
        // The keys it adds, for the walk to see which a Resource has already.
        for (k, key) in ENRICH_KEYS.iter().enumerate() {
            if e.attrs & 1 << k != 0 {
                compiled.strings.push((enrich_key(key), 1 << k));
            }
        }
    }
    *slots = new_slots;
    Ok(compiled)
}

/// A trigger rule's kernel encoding.
fn trigger_encoding(action: &Action, objects: &ObjectSlots) -> Trigger {
    let Action::Trigger(t) = action else {
        return Trigger::NONE;
    };
    let bits = |names: &[At<String>], table: &std::collections::BTreeMap<String, u8>| {
        names
            .iter()
            .filter_map(|n| table.get(&n.value))
            .fold(0u64, |b, &s| b | 1 << s)
    };
    let (threshold, within_ms) = match t.threshold {
        Some((count, within)) => (count, within.as_millis().min(u32::MAX as u128) as u32),
        None => (0, 0),
    };
    Trigger {
        flush: bits(&t.flush, &objects.recorders) as u32,
        threshold,
        set_state: bits(&t.set_state, &objects.states),
        cooldown_ns: t.cooldown.as_nanos().min(u64::MAX as u128) as u64,
        within_ms,
        _pad: 0,
    }
}

/// More recorders or states (`kind`) than `max`, at the first one over it when the set alone has
/// too many (`names`: where each is named, in order; never empty, as an empty set fits).
fn too_many(kind: &str, names: &[(&PathBuf, Pos)], max: u32) -> Diagnostic {
    let over = names.len() > max as usize;
    let (file, pos) = names[(max as usize).min(names.len() - 1)];
    let message = if over {
        format!(
            "too many {kind}: this is number {}, and a rule set has at most {max}",
            max + 1
        )
    } else {
        format!(
            "too many {kind}: at most {max}, counting those of the active rule set while it \
             is replaced"
        )
    };
    Diagnostic::new(file, pos, message)
}

/// Refuses what the kernel programs cannot run.
fn check_supported(action: &Action) -> Result<(), String> {
    match action {
        Action::RateLimit { per_second } if *per_second > MAX_RATE => Err(format!(
            "per_second is {per_second}; the limit is {MAX_RATE} (one a nanosecond)"
        )),
        _ => Ok(()),
    }
}

/// The kernel rule's `param` for `action`.
fn action_param(action: &Action) -> u64 {
    match action {
        Action::Sample { keep_one_in } => *keep_one_in,
        Action::RateLimit { per_second } => *per_second,
        Action::Count
        | Action::Drop
        | Action::Redact { .. }
        | Action::Capture
        | Action::Trigger(_) => 0,
    }
}

/// The rule-set-wide limits.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Limit {
    Rules,
    Needles,
    AcStates,
    Attributes,
    Services,
    RemoveKeys,
    GroupRules,
    GroupKeys,
    ProbeRules,
    Probes,
    Slots,
}

struct Compiler<'d> {
    slots: SlotTable,
    rules: Vec<CompiledRule>,
    kernel_rules: Vec<Rule>,
    needles: CondBits<&'d str>,
    automaton: AcBuilder,
    /// Attribute pairs and event names: their bits share the rules' `attrs` word.
    attributes: CondBits<Cond<'d>>,
    services: CondBits<&'d str>,
    /// Attribute names that redact rules remove.
    remove_keys: CondBits<&'d str>,
    /// Attribute keys `group_by` names, and the rules with a `group_by`.
    group_keys: CondBits<&'d str>,
    grouped: usize,
    probe_rules: Vec<ProbeRule>,
    probes: Vec<&'d ProbeDef>,
    drops: Vec<HookUse>,
    captures: Vec<HookUse>,
    diags: Vec<Diagnostic>,
    /// Rule-set-wide limits already reported (each is reported once).
    reported: Vec<Limit>,
    recorders: Vec<CompiledRecorder>,
    states: Vec<CompiledState>,
}

impl<'d> Compiler<'d> {
    fn new(slots: SlotTable) -> Self {
        Compiler {
            slots,
            rules: Vec::new(),
            kernel_rules: Vec::new(),
            needles: CondBits::new("body_contains values"),
            automaton: AcBuilder::new(),
            attributes: CondBits::new("attribute key = value pairs and event_name values"),
            services: CondBits::new("service values"),
            remove_keys: CondBits::new("remove_attributes names"),
            group_keys: CondBits::new("group_by attribute keys"),
            grouped: 0,
            probe_rules: Vec::new(),
            probes: Vec::new(),
            drops: Vec::new(),
            captures: Vec::new(),
            diags: Vec::new(),
            reported: Vec::new(),
            recorders: Vec::new(),
            states: Vec::new(),
        }
    }

    /// Gives the set's recorders and states their slots.
    fn objects(&mut self, recorders: &[RecorderDef], states: &[StateDef]) {
        let names: Vec<&str> = recorders.iter().map(|r| r.name.value.as_str()).collect();
        match ObjectSlots::assign(&self.slots.objects.recorders, &names, MAX_RECORDERS) {
            Some(table) => {
                self.recorders = recorders
                    .iter()
                    .map(|r| CompiledRecorder {
                        name: r.name.value.clone(),
                        slot: table[&r.name.value],
                        size: r.size,
                        max_record: r.max_record,
                        file: r.file.clone(),
                        pos: r.name.pos,
                    })
                    .collect();
                self.slots.objects.recorders = table;
            }
            None => {
                let names: Vec<_> = recorders.iter().map(|r| (&r.file, r.name.pos)).collect();
                self.diags
                    .push(too_many("recorders", &names, MAX_RECORDERS));
            }
        }
        let names: Vec<&str> = states.iter().map(|s| s.name.value.as_str()).collect();
        match ObjectSlots::assign(&self.slots.objects.states, &names, MAX_STATES) {
            Some(table) => {
                self.states = states
                    .iter()
                    .map(|s| CompiledState {
                        name: s.name.value.clone(),
                        slot: table[&s.name.value],
                        duration: s.duration,
                    })
                    .collect();
                self.slots.objects.states = table;
            }
            None => {
                let names: Vec<_> = states.iter().map(|s| (&s.file, s.name.pos)).collect();
                self.diags.push(too_many("states", &names, MAX_STATES));
            }
        }
    }

    /// A rule's `state` condition: the state bits that must be on, and off.
    fn state_bits(&self, def: &RuleDef) -> (u64, u64) {
        let Some((name, off)) = &def.conditions.state else {
            return (0, 0);
        };
        let Some(&slot) = self.slots.objects.states.get(&name.value) else {
            return (0, 0);
        };
        if *off { (0, 1 << slot) } else { (1 << slot, 0) }
    }

    fn error(&mut self, def: &RuleDef, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::new(&def.file, pos, message));
    }

    /// Reports a rule-set-wide limit the first time it is hit.
    fn limit(&mut self, def: &RuleDef, pos: Pos, limit: Limit, message: String) {
        if !self.reported.contains(&limit) {
            self.reported.push(limit);
            self.error(def, pos, message);
        }
    }

    fn rule(&mut self, def: &'d RuleDef) {
        if let Err(message) = check_supported(&def.action.value) {
            self.error(def, def.action.pos, message);
        }
        let body = self.body_bits(def);
        let attrs = self.attribute_bits(def);
        let service = self.service_bits(def);
        let (remove, flags) = self.redact_encoding(def);
        let slot = self.slot(def);
        let severity = def.conditions.severity_range();
        let (state_on, state_off) = self.state_bits(def);
        let (group, group_key) = self.group_encoding(def);
        let trigger = trigger_encoding(&def.action.value, &self.slots.objects);
        let recorder = def
            .recorder
            .as_ref()
            .and_then(|r| self.slots.objects.recorders.get(&r.value))
            .map_or(0, |&s| s + 1);
        let mut comm_refused = false;
        for hook in &def.hooks {
            let probe = match hook {
                Hook::Otlp => None,
                Hook::Uprobe(name) => match def.probe(name) {
                    Some(probe) => Some(probe),
                    // The loader links every uprobe hook to its probe.
                    None => continue,
                },
            };
            let Some(probe) = probe else {
                if self.kernel_rules.len() >= MAX_RULES {
                    let message = format!("too many rules: a rule set holds at most {MAX_RULES}");
                    self.limit(def, def.name.pos, Limit::Rules, message);
                    continue;
                }
                self.kernel_rules.push(Rule {
                    slot,
                    action: def.action.value.code(),
                    sev_lo: severity.lo,
                    sev_hi: severity.hi,
                    body,
                    attrs,
                    service,
                    remove,
                    flags,
                    param: action_param(&def.action.value),
                    recorder,
                    state_on,
                    state_off,
                    trigger,
                    first: Rule::first_of(body, attrs, service),
                    group,
                    group_key,
                    max_groups: def.max_groups as u16,
                    _pad_group: 0,
                });
                self.push_compiled(def, hook, slot);
                continue;
            };
            // Without the probe's own `service`, a rule's `service` is matched against the
            // calling process's name, which the kernel keeps to COMM_LEN - 1 bytes (said once
            // for a rule, whatever number of such hooks it has).
            if probe.service.is_none()
                && let Some(service) = &def.conditions.service
                && service.value.len() >= COMM_LEN
            {
                if !comm_refused {
                    comm_refused = true;
                    let cut = COMM_LEN - 1;
                    let write = if service.value.is_char_boundary(cut) {
                        format!("write \"{}\"", &service.value[..cut])
                    } else {
                        // The kernel cuts inside a character: no text is the name it keeps.
                        "no `service` can match it (the kernel cuts it inside a character)"
                            .to_string()
                    };
                    let message = format!(
                        "service \"{}\" is {} bytes: on hook \"uprobe:{}\", whose probe sets no \
                         `service`, it is matched against the calling process's name, which \
                         the kernel keeps to {} bytes, so it would never match; {write} (or \
                         give the probe a `service`)",
                        service.value,
                        service.value.len(),
                        probe.name.value,
                        COMM_LEN - 1,
                    );
                    self.error(def, service.pos, message);
                }
                continue;
            }
            if self.probe_rules.len() >= MAX_PROBE_RULES {
                let message = format!(
                    "too many rules on uprobe hooks: a rule set holds at most {MAX_PROBE_RULES}"
                );
                self.limit(def, def.name.pos, Limit::ProbeRules, message);
                continue;
            }
            let Some(index) = self.probe_index(def, probe) else {
                continue;
            };
            self.probe_rules.push(ProbeRule {
                slot,
                action: def.action.value.code(),
                sev_lo: severity.lo,
                sev_hi: severity.hi,
                probes: 1 << index,
                body,
                service,
                state_on,
                state_off,
                trigger,
                ..ProbeRule::default()
            });
            let hook_use = HookUse {
                file: def.file.clone(),
                pos: def.action.pos,
                rule: def.name.value.clone(),
                hook: hook.name(),
            };
            match def.action.value {
                Action::Drop => self.drops.push(hook_use),
                Action::Capture => self.captures.push(hook_use),
                _ => {}
            }
            self.push_compiled(def, hook, slot);
        }
    }

    fn push_compiled(&mut self, def: &RuleDef, hook: &Hook, slot: u16) {
        self.rules.push(CompiledRule {
            name: def.name.value.clone(),
            action: def.action.value.kind(),
            hook: hook.clone(),
            file: def.file.clone(),
            line: def.pos.line,
            slot,
            group_by: def
                .group_by
                .as_ref()
                .filter(|_| matches!(hook, Hook::Otlp))
                .map(|g| (g.value.text(), def.max_groups)),
        });
    }

    /// The index of `probe` in the set's probe list (its bit in `ProbeRule::probes`).
    fn probe_index(&mut self, def: &RuleDef, probe: &'d ProbeDef) -> Option<u8> {
        if let Some(i) = self
            .probes
            .iter()
            .position(|p| p.name.value == probe.name.value)
        {
            return Some(i as u8);
        }
        if self.probes.len() >= MAX_PROBES {
            let message =
                format!("too many probes: the rules of a rule set can hook at most {MAX_PROBES}");
            self.limit(def, def.name.pos, Limit::Probes, message);
            return None;
        }
        if let Some(service) = &probe.service
            && service.value.len() > MAX_SERVICE_LEN
        {
            let message = format!(
                "service is {} bytes; the limit is {MAX_SERVICE_LEN}",
                service.value.len()
            );
            self.diags
                .push(Diagnostic::new(&probe.file, service.pos, message));
        }
        self.probes.push(probe);
        Some((self.probes.len() - 1) as u8)
    }

    fn slot(&mut self, def: &RuleDef) -> u16 {
        match self.slots.assign(&def.name.value) {
            Some(slot) => slot,
            None => {
                // Once, at the first rule without one: every later rule is in the same case.
                // Not at all when the set has too many rules anyway: that is the cause to fix.
                if !self.reported.contains(&Limit::Rules) {
                    let message = format!(
                        "no free counter slot for rule \"{}\" (nor for any rule after it): all \
                         {MAX_SLOTS} slots are taken by the rules of this set and of the set \
                         before",
                        def.name.value
                    );
                    self.limit(def, def.name.pos, Limit::Slots, message);
                }
                0
            }
        }
    }

    /// Checks a string's length against `1..=max` bytes (or `0..=max` when `may_be_empty`).
    fn length_ok(
        &mut self,
        def: &RuleDef,
        value: &At<String>,
        what: &str,
        max: usize,
        may_be_empty: bool,
    ) -> bool {
        let len = value.value.len();
        if len == 0 && !may_be_empty {
            self.error(def, value.pos, format!("{what} must not be empty"));
            return false;
        }
        if len > max {
            let message = format!("{what} is {len} bytes; the limit is {max}");
            self.error(def, value.pos, message);
            return false;
        }
        true
    }

    fn body_bits(&mut self, def: &'d RuleDef) -> u64 {
        let Some(needle) = &def.conditions.body_contains else {
            return 0;
        };
        if !self.length_ok(def, needle, "body_contains", MAX_NEEDLE_LEN, false) {
            return 0;
        }
        let (bit, new) = match self.needles.bit(&needle.value.as_str()) {
            Ok(found) => found,
            Err(TooManyConds) => {
                let message = self.needles.limit_message();
                self.limit(def, needle.pos, Limit::Needles, message);
                return 0;
            }
        };
        if new && self.automaton.insert(needle.value.as_bytes(), bit) == Err(TooManyStates) {
            let message = format!(
                "body_contains needles need more than {MAX_AC_STATES} automaton states \
                 (about {} bytes in total, less shared prefixes); use fewer or shorter needles",
                MAX_AC_STATES - 1
            );
            self.limit(def, needle.pos, Limit::AcStates, message);
        }
        1 << bit
    }

    fn attribute_bits(&mut self, def: &'d RuleDef) -> u64 {
        let mut bits = 0;
        for (key, value) in &def.conditions.attributes {
            let key_ok = self.length_ok(def, key, "attribute key", MAX_ATTR_KEY_LEN, false);
            let value_ok = match &value.value {
                AttrValue::Str(v) => {
                    let v = At::new(v.clone(), value.pos);
                    self.length_ok(def, &v, "attribute value", MAX_ATTR_VALUE_LEN, true)
                }
                AttrValue::Int(_) | AttrValue::Bool(_) => true,
            };
            if !(key_ok && value_ok) {
                continue;
            }
            bits |= self.cond_bit(def, key.pos, Cond::Attr(key.value.as_str(), &value.value));
        }
        if let Some(event) = &def.conditions.event_name
            && self.length_ok(def, event, "event_name", MAX_EVENT_LEN, false)
        {
            bits |= self.cond_bit(def, event.pos, Cond::Event(event.value.as_str()));
        }
        bits
    }

    /// The bit of an attribute pair or event name (0 past the limit, reported).
    fn cond_bit(&mut self, def: &RuleDef, pos: Pos, cond: Cond<'d>) -> u64 {
        match self.attributes.bit(&cond) {
            Ok((bit, _)) => 1 << bit,
            Err(TooManyConds) => {
                let message = self.attributes.limit_message();
                self.limit(def, pos, Limit::Attributes, message);
                0
            }
        }
    }

    /// A count rule's [`Rule::group`] and [`Rule::group_key`] (0, 0 without `group_by`).
    fn group_encoding(&mut self, def: &'d RuleDef) -> (u8, u8) {
        let Some(g) = &def.group_by else {
            return (0, 0);
        };
        self.grouped += 1;
        if self.grouped > MAX_GROUP_RULES {
            let message = format!(
                "too many rules with group_by: a rule set can have at most {MAX_GROUP_RULES}"
            );
            self.limit(def, g.pos, Limit::GroupRules, message);
        }
        match &g.value {
            GroupBy::Service => (GROUP_SERVICE, 0),
            GroupBy::Severity => (GROUP_SEVERITY, 0),
            GroupBy::EventName => (GROUP_EVENT, 0),
            GroupBy::Attribute(key) => match self.group_keys.bit(&key.as_str()) {
                Ok((bit, _)) if (bit as usize) < MAX_GROUP_KEYS => (GROUP_ATTR, bit as u8),
                _ => {
                    let message = format!(
                        "too many distinct group_by attribute keys: a rule set can use at most \
                         {MAX_GROUP_KEYS}"
                    );
                    self.limit(def, g.pos, Limit::GroupKeys, message);
                    (GROUP_ATTR, 0)
                }
            },
        }
    }

    /// A redact rule's removal-name bits and flags.
    fn redact_encoding(&mut self, def: &'d RuleDef) -> (u64, u8) {
        let Action::Redact {
            remove_attributes,
            mask_body,
        } = &def.action.value
        else {
            return (0, 0);
        };
        let mut bits = 0;
        for name in remove_attributes {
            if !self.length_ok(def, name, "attribute name", MAX_ATTR_KEY_LEN, false) {
                continue;
            }
            match self.remove_keys.bit(&name.value.as_str()) {
                Ok((bit, _)) => bits |= 1 << bit,
                Err(TooManyConds) => {
                    let message = self.remove_keys.limit_message();
                    self.limit(def, name.pos, Limit::RemoveKeys, message);
                }
            }
        }
        (bits, if *mask_body { RULE_MASK_BODY } else { 0 })
    }

    fn service_bits(&mut self, def: &'d RuleDef) -> u64 {
        let Some(service) = &def.conditions.service else {
            return 0;
        };
        if !self.length_ok(def, service, "service", MAX_SERVICE_LEN, false) {
            return 0;
        }
        match self.services.bit(&service.value.as_str()) {
            Ok((bit, _)) => 1 << bit,
            Err(TooManyConds) => {
                let message = self.services.limit_message();
                self.limit(def, service.pos, Limit::Services, message);
                0
            }
        }
    }

    fn finish(self) -> Result<(Compiled, SlotTable), Vec<Diagnostic>> {
        if !self.diags.is_empty() {
            return Err(self.diags);
        }
        let ac = if self.needles.order.is_empty() {
            Vec::new()
        } else {
            self.automaton.build()
        };
        let mut ruleset = RuleSet::EMPTY;
        ruleset.n_rules = self.kernel_rules.len() as u32;
        ruleset.ac_states = ac.len() as u32;
        ruleset.remove_keys = self.remove_keys.order.len() as u32;
        ruleset.needs = needs(&self.kernel_rules);
        ruleset.attr_key_lens = self.attributes.iter().fold(0, |b, (c, _)| match c {
            Cond::Attr(k, _) => b | key_len_bit(k.len() as u32),
            Cond::Event(_) => b,
        });
        if self
            .attributes
            .iter()
            .any(|(c, _)| matches!(c, Cond::Event(_)))
        {
            ruleset.needs |= NEED_EVENT;
        }
        if self.kernel_rules.iter().any(|r| r.group != 0) {
            ruleset.needs |= NEED_GROUPS;
        }
        ruleset.group_key_lens = self
            .group_keys
            .iter()
            .fold(0, |b, (k, _)| b | key_len_bit(k.len() as u32));
        ruleset.redact_key_lens = self
            .remove_keys
            .iter()
            .fold(0, |b, (name, _)| b | key_len_bit(name.len() as u32));
        // The start state matches nothing (needles are never empty), so a byte that stays in it
        // can be passed over.
        if let Some(start) = ac.first().filter(|s| s.out == 0) {
            for (b, &next) in start.next.iter().enumerate() {
                if next == 0 {
                    ruleset.ac_skip[b >> 6] |= 1 << (b & 63);
                }
            }
            let common = |b: usize| (b as u8).is_ascii_alphanumeric() || b == b' ' as usize;
            if (0..256).all(|b| !common(b) || start.next[b] == 0) {
                ruleset.needs |= NEED_SCAN_SKIP;
                // Few bytes begin a needle: the scan tests a word for each of them.
                let first: Vec<u8> = (0..=255u8)
                    .filter(|&b| start.next[b as usize] != 0)
                    .collect();
                if let Some(&f) = first.first()
                    && first.len() <= ruleset.ac_first.len()
                {
                    ruleset.ac_first = [f; 4];
                    ruleset.ac_first[..first.len()].copy_from_slice(&first);
                    ruleset.needs |= NEED_SCAN_WORDS;
                }
            }
        }
        ruleset.states = self
            .kernel_rules
            .iter()
            .fold(0, |b, r| b | r.state_on | r.state_off);
        let mut state_durations = [0u64; MAX_STATES as usize];
        for s in &self.states {
            state_durations[s.slot as usize] = s.duration.as_nanos() as u64;
        }
        ruleset.rules[..self.kernel_rules.len()].copy_from_slice(&self.kernel_rules);
        let services = self.services.iter().map(|(s, bits)| (service_key(s), bits));
        let attributes = self.attributes.iter().map(|(c, bits)| match c {
            Cond::Attr(k, v) => (attribute_key(k, v), bits),
            Cond::Event(e) => (event_key(e), bits),
        });
        let mut uprobe = UprobeSet::empty();
        uprobe.rules.n_rules = self.probe_rules.len() as u32;
        uprobe.rules.states = self
            .probe_rules
            .iter()
            .fold(0, |b, r| b | r.state_on | r.state_off);
        uprobe.rules.rules[..self.probe_rules.len()].copy_from_slice(&self.probe_rules);
        if self.probe_rules.iter().any(|r| r.body != 0) {
            uprobe.rules.flags |= PRS_BODY;
        }
        if !self.captures.is_empty() {
            uprobe.rules.flags |= PRS_CAPTURE;
        }
        uprobe.probes = self
            .probes
            .iter()
            .map(|p| CompiledProbe {
                def: (*p).clone(),
                service_bits: p
                    .service
                    .as_ref()
                    .and_then(|s| self.services.bits.get(s.value.as_str()))
                    .map_or(0, |bit| 1 << bit),
            })
            .collect();
        if !self.probe_rules.is_empty() {
            uprobe.comms = self
                .services
                .iter()
                .filter(|(s, _)| s.len() < COMM_LEN)
                .map(|(s, bits)| {
                    let mut comm = [0u8; COMM_LEN];
                    comm[..s.len()].copy_from_slice(s.as_bytes());
                    (comm, bits)
                })
                .collect();
        }
        uprobe.drops = self.drops;
        uprobe.captures = self.captures;
        let compiled = Compiled {
            rules: self.rules,
            uprobe,
            ruleset,
            strings: services
                .chain(attributes)
                .chain(
                    self.remove_keys
                        .iter()
                        .map(|(name, bits)| (remove_key(name), bits)),
                )
                .chain(
                    self.group_keys
                        .iter()
                        .map(|(name, bits)| (group_key(name), bits)),
                )
                .collect(),
            ac,
            recorders: self.recorders,
            states: self.states,
            state_durations,
        };
        Ok((compiled, self.slots))
    }
}
