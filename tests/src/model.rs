//! The tests' one model of rule evaluation (README, "Rules", "Evaluation, per record" and
//! "Severity"), written independently of dt's compiler and walker.
//!
//! - [`RuleSpec`]: one `[[rule]]` (name, [`Action`] with its parameters, and the match
//!   conditions, the severity one as a [`Severity`]: its TOML text and the SeverityNumbers the
//!   test means by it). It renders itself to TOML ([`RuleSpec::to_toml`], [`rules_toml`]; with
//!   an `[enrich]` table, [`EnrichSpec`], [`rule_set_toml`]) and
//!   decides in plain Rust which records it matches ([`RuleSpec::matches`]), so a test's
//!   expectations and the rule file it installs come from one description.
//! - [`Facts`]: what the rules look at in one record, as strings; [`RecordFacts`]: the same with
//!   what the newer conditions need (the `event_name`, typed attribute values, raw bytes for
//!   group values). Every `Facts` is a `RecordFacts` (string attributes only, no event name).
//! - [`evaluate_record`] ([`evaluate_facts`]): the rules in order over one record, first
//!   stopping rule wins: which rules matched, which redact rules marked it, which group each
//!   grouped rule counts it under ([`GroupKey`]), and where evaluation ended ([`End`]).
//! - [`Decider`]: the sample counters and rate-limit buckets that settle a sample or rate_limit
//!   end, and the group tables of `group_by` rules ([`GroupTable`]); [`Evaluation::settle`]
//!   turns an evaluation into the record's fate and counter deltas ([`Counts`]) and counts its
//!   groups; [`Redaction`] is the edits a kept record leaves with.
//! - [`simulate`] runs all of it over a sequence of records (one agent, records evaluated in
//!   order); [`evaluate`] is its count/drop summary as [`Expected`]. [`simulate_with_facts`]
//!   and [`evaluate_with_facts`] take the rules' view of each record from the caller (a
//!   [`ReceivedRecord`] has no event name, and renders typed values as strings).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{AddAssign, RangeInclusive};

use crate::record::{ReceivedRecord, SentRecord};

/// A rule's action and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Count,
    Drop,
    Sample {
        keep_one_in: u64,
    },
    RateLimit {
        per_second: u64,
    },
    Redact {
        remove: Vec<String>,
        mask_body: bool,
    },
}

impl Action {
    /// The `action` value in TOML (and in `stats`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Count => "count",
            Action::Drop => "drop",
            Action::Sample { .. } => "sample",
            Action::RateLimit { .. } => "rate_limit",
            Action::Redact { .. } => "redact",
        }
    }

    /// The action's parameter lines, as they follow `action = ...` in a `[[rule]]`.
    fn params_toml(&self) -> String {
        match self {
            Action::Count | Action::Drop => String::new(),
            Action::Sample { keep_one_in } => format!("keep_one_in = {keep_one_in}\n"),
            Action::RateLimit { per_second } => format!("per_second = {per_second}\n"),
            Action::Redact { remove, mask_body } => {
                let mut s = String::new();
                if !remove.is_empty() {
                    let names: Vec<String> = remove.iter().map(|n| toml_str(n)).collect();
                    s += &format!("remove_attributes = [{}]\n", names.join(", "));
                }
                if *mask_body {
                    s += "mask_body = true\n";
                }
                s
            }
        }
    }

    /// Whether a match stops evaluation (drop, sample, rate_limit).
    pub fn stops(&self) -> bool {
        matches!(
            self,
            Action::Drop | Action::Sample { .. } | Action::RateLimit { .. }
        )
    }
}

/// A severity condition: its TOML value and the SeverityNumbers `lo..=hi` it covers. Ranges
/// are within 1..=24, or exactly 0..=0 for `"UNSPECIFIED"`, so SeverityNumber 0 matches only
/// `"UNSPECIFIED"` and numbers outside 0..=24 match no severity condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Severity {
    /// The TOML value as written (a quoted string, or a bare integer).
    pub toml: String,
    pub lo: i32,
    pub hi: i32,
}

impl Severity {
    pub fn contains(&self, severity_number: i32) -> bool {
        (self.lo..=self.hi).contains(&severity_number)
    }
}

/// The value of a typed attribute condition: a TOML string matches a `string_value`, an
/// integer an `int_value`, a boolean a `bool_value`; nothing else matches (the string "503"
/// never matches int 503, int 1 never matches bool true).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl RuleValue {
    /// The TOML value.
    pub fn toml(&self) -> String {
        match self {
            RuleValue::Str(s) => toml_str(s),
            RuleValue::Int(i) => i.to_string(),
            RuleValue::Bool(b) => b.to_string(),
        }
    }

    /// Whether an attribute value is this one (same type, same value).
    pub fn matches(&self, v: &AttrValue) -> bool {
        match (self, v) {
            (RuleValue::Str(s), AttrValue::Str(b)) => s.as_bytes() == &b[..],
            (RuleValue::Int(i), AttrValue::Int(j)) => i == j,
            (RuleValue::Bool(a), AttrValue::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// What a `group_by` groups by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupDim {
    /// `"service"`: the resource's `service.name` string.
    Service,
    /// `"severity"`: the level name of the SeverityNumber ([`severity_level`]).
    Severity,
    /// `"event_name"`.
    EventName,
    /// `"attributes.KEY"`: the value of the record's last attribute `KEY`.
    Attribute(String),
}

impl GroupDim {
    /// `"service"`, `"severity"`, `"event_name"` or `"attributes.KEY"`.
    pub fn parse(s: &str) -> Option<GroupDim> {
        Some(match s {
            "service" => GroupDim::Service,
            "severity" => GroupDim::Severity,
            "event_name" => GroupDim::EventName,
            _ => GroupDim::Attribute(s.strip_prefix("attributes.")?.to_string()),
        })
    }

    /// The `group_by` value (unquoted).
    pub fn as_text(&self) -> String {
        match self {
            GroupDim::Service => "service".into(),
            GroupDim::Severity => "severity".into(),
            GroupDim::EventName => "event_name".into(),
            GroupDim::Attribute(k) => format!("attributes.{k}"),
        }
    }
}

/// A count rule's `group_by` (and `max_groups`, `None` for the default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub dim: GroupDim,
    pub max_groups: Option<u32>,
}

impl GroupBy {
    /// `max_groups` when not given.
    pub const DEFAULT_MAX_GROUPS: u32 = 64;

    /// How many distinct values get a group of their own.
    pub fn max(&self) -> u32 {
        self.max_groups.unwrap_or(Self::DEFAULT_MAX_GROUPS)
    }

    /// The group a match of the rule in record `f` counts under (before the `max_groups`
    /// cap, which [`GroupTable::count`] applies).
    pub fn key(&self, f: &RecordFacts) -> GroupKey {
        match &self.dim {
            GroupDim::Service => f
                .service
                .as_deref()
                .map_or(GroupKey::Missing, GroupKey::value),
            GroupDim::Severity => GroupKey::value(severity_level(f.severity).as_bytes()),
            GroupDim::EventName => match f.event_name.as_deref() {
                Some(e) if !e.is_empty() => GroupKey::value(e),
                _ => GroupKey::Missing,
            },
            GroupDim::Attribute(k) => {
                match f.attributes.iter().rev().find(|(rk, _)| rk == k.as_bytes()) {
                    None => GroupKey::Missing,
                    Some((_, AttrValue::Str(s))) => GroupKey::value(s),
                    Some((_, AttrValue::Int(i))) => GroupKey::value(i.to_string().as_bytes()),
                    Some((_, AttrValue::Bool(b))) => GroupKey::value(b.to_string().as_bytes()),
                    Some((_, AttrValue::Other)) => GroupKey::Other,
                }
            }
        }
    }
}

/// The level name a `severity` group shows for a SeverityNumber: 1–4 `TRACE`, 5–8 `DEBUG`,
/// 9–12 `INFO`, 13–16 `WARN`, 17–20 `ERROR`, 21–24 `FATAL`, anything else `UNSPECIFIED`.
pub fn severity_level(n: i32) -> &'static str {
    match crate::otlp::severity_text(n) {
        "" => "UNSPECIFIED",
        level => level,
    }
}

/// The longest group value shown whole, in bytes; a longer one is cut there and shown with
/// `…` appended.
pub const GROUP_VALUE_MAX: usize = 64;

/// One group of a `group_by` rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupKey {
    /// A value: its first [`GROUP_VALUE_MAX`] bytes, and whether it was longer (cut). Values
    /// longer than that with the same first bytes are one group.
    Value(Vec<u8>, bool),
    /// `"__missing__"`: no such value in the record. Takes no slot.
    Missing,
    /// `"__other__"`: a value of another type, or a new value beyond `max_groups`. Takes no
    /// slot.
    Other,
}

impl GroupKey {
    /// The group of value `v` (bytes as sent), cut to [`GROUP_VALUE_MAX`] bytes.
    pub fn value(v: &[u8]) -> GroupKey {
        if v.len() > GROUP_VALUE_MAX {
            GroupKey::Value(v[..GROUP_VALUE_MAX].to_vec(), true)
        } else {
            GroupKey::Value(v.to_vec(), false)
        }
    }

    /// The group's name in `stats --json`: the value as `String::from_utf8_lossy` shows it
    /// (a cut value without the first bytes of a character the cut split, and with `…`
    /// appended), `__missing__`, `__other__`.
    pub fn render(&self) -> String {
        match self {
            GroupKey::Value(v, cut) => {
                let mut v = &v[..];
                if *cut {
                    // The last byte that starts a character, among the last three: when what
                    // starts there is an unfinished character, it is not shown.
                    let from = v.len().saturating_sub(3);
                    if let Some(p) = (from..v.len()).rev().find(|&i| v[i] & 0xc0 != 0x80)
                        && std::str::from_utf8(&v[p..]).is_err_and(|e| e.error_len().is_none())
                    {
                        v = &v[..p];
                    }
                }
                let mut s = String::from_utf8_lossy(v).into_owned();
                if *cut {
                    s.push('…');
                }
                s
            }
            GroupKey::Missing => "__missing__".into(),
            GroupKey::Other => "__other__".into(),
        }
    }
}

/// One `group_by` rule's groups over the agent's life (per rule name, like its counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupTable {
    /// Matches per group. The [`GroupKey::Value`] keys are the values that took a slot.
    pub counts: BTreeMap<GroupKey, u64>,
    /// How many values took a slot.
    pub slots: u32,
}

impl GroupTable {
    /// Counts one match under `key`: a value that has no slot yet takes one while fewer than
    /// `max_groups` are taken, else counts under [`GroupKey::Other`].
    pub fn count(&mut self, key: GroupKey, max_groups: u32) {
        let key = match key {
            GroupKey::Value(..) if !self.counts.contains_key(&key) => {
                if self.slots < max_groups {
                    self.slots += 1;
                    key
                } else {
                    GroupKey::Other
                }
            }
            k => k,
        };
        *self.counts.entry(key).or_default() += 1;
    }

    /// The groups as `stats --json` names them (values whose bytes differ but show the same,
    /// such as two invalid UTF-8 sequences, added up).
    pub fn rendered(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (k, n) in &self.counts {
            *out.entry(k.render()).or_default() += n;
        }
        out
    }

    /// Matches counted (the rule's `matched`).
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// One `[[rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub action: Action,
    pub severity: Option<Severity>,
    /// Equals the resource's `service.name`.
    pub service: Option<String>,
    /// Equals the record's (last) `event_name` (an absent or empty one equals nothing).
    pub event_name: Option<String>,
    /// A substring of the string body (bytes, case-sensitive).
    pub body_contains: Option<String>,
    /// String attributes of the record: key equals value, each of them.
    pub attributes: Vec<(String, String)>,
    /// Typed attribute conditions (rendered after `attributes` in the same inline table; a
    /// key must not be in both).
    pub typed_attributes: Vec<(String, RuleValue)>,
    /// Count rules: what their matches are counted by.
    pub group_by: Option<GroupBy>,
}

impl RuleSpec {
    pub fn new(name: &str, action: Action) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            action,
            severity: None,
            service: None,
            event_name: None,
            body_contains: None,
            attributes: Vec::new(),
            typed_attributes: Vec::new(),
            group_by: None,
        }
    }

    pub fn count(name: &str) -> RuleSpec {
        RuleSpec::new(name, Action::Count)
    }

    pub fn drop(name: &str) -> RuleSpec {
        RuleSpec::new(name, Action::Drop)
    }

    pub fn sample(name: &str, keep_one_in: u64) -> RuleSpec {
        RuleSpec::new(name, Action::Sample { keep_one_in })
    }

    pub fn rate_limit(name: &str, per_second: u64) -> RuleSpec {
        RuleSpec::new(name, Action::RateLimit { per_second })
    }

    pub fn redact(name: &str, remove: &[&str], mask_body: bool) -> RuleSpec {
        RuleSpec::new(
            name,
            Action::Redact {
                remove: remove.iter().map(|s| s.to_string()).collect(),
                mask_body,
            },
        )
    }

    /// `severity = "<text>"`, which the test states covers SeverityNumbers `range`.
    pub fn severity(self, text: &str, range: RangeInclusive<i32>) -> RuleSpec {
        self.severity_value(&toml_str(text), range)
    }

    /// `severity = <value>` with the TOML value written as given (e.g. a bare integer), which
    /// the test states covers SeverityNumbers `range`.
    pub fn severity_value(mut self, toml: &str, range: RangeInclusive<i32>) -> RuleSpec {
        self.severity = Some(Severity {
            toml: toml.into(),
            lo: *range.start(),
            hi: *range.end(),
        });
        self
    }

    pub fn service(mut self, s: &str) -> RuleSpec {
        self.service = Some(s.into());
        self
    }

    /// `event_name = "<s>"`.
    pub fn event_name(mut self, s: &str) -> RuleSpec {
        self.event_name = Some(s.into());
        self
    }

    pub fn body_contains(mut self, s: &str) -> RuleSpec {
        self.body_contains = Some(s.into());
        self
    }

    /// A string attribute condition, `"k" = "v"`.
    pub fn attribute(mut self, k: &str, v: &str) -> RuleSpec {
        self.attributes.push((k.into(), v.into()));
        self
    }

    /// An integer attribute condition, `"k" = v`: an `int_value` equal to `v`.
    pub fn attribute_int(self, k: &str, v: i64) -> RuleSpec {
        self.attribute_value(k, RuleValue::Int(v))
    }

    /// A boolean attribute condition, `"k" = v`: a `bool_value` equal to `v`.
    pub fn attribute_bool(self, k: &str, v: bool) -> RuleSpec {
        self.attribute_value(k, RuleValue::Bool(v))
    }

    /// A typed attribute condition.
    pub fn attribute_value(mut self, k: &str, v: RuleValue) -> RuleSpec {
        self.typed_attributes.push((k.into(), v));
        self
    }

    /// `group_by = "<dim>"` (`service`, `severity`, `event_name` or `attributes.KEY`), and
    /// `max_groups = N` when given. Panics on another `dim`.
    pub fn group_by(mut self, dim: &str, max_groups: Option<u32>) -> RuleSpec {
        let dim = GroupDim::parse(dim).unwrap_or_else(|| panic!("group_by {dim:?}"));
        self.group_by = Some(GroupBy { dim, max_groups });
        self
    }

    /// Every attribute condition, strings first, as typed values.
    pub fn all_attributes(&self) -> impl Iterator<Item = (&str, RuleValue)> {
        self.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), RuleValue::Str(v.clone())))
            .chain(
                self.typed_attributes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone())),
            )
    }

    /// The rule as a `[[rule]]` table: name, action and its parameters, `group_by` and
    /// `max_groups`, then `[rule.match]` (only when some condition is present) with severity,
    /// service, event_name, body_contains and attributes (string ones first) in that order.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[[rule]]\nname = {}\naction = \"{}\"\n{}",
            toml_str(&self.name),
            self.action.as_str(),
            self.action.params_toml()
        );
        if let Some(g) = &self.group_by {
            s += &format!("group_by = {}\n", toml_str(&g.dim.as_text()));
            if let Some(n) = g.max_groups {
                s += &format!("max_groups = {n}\n");
            }
        }
        let has_match = self.severity.is_some()
            || self.service.is_some()
            || self.event_name.is_some()
            || self.body_contains.is_some()
            || !self.attributes.is_empty()
            || !self.typed_attributes.is_empty();
        if has_match {
            s += "[rule.match]\n";
            if let Some(sev) = &self.severity {
                s += &format!("severity = {}\n", sev.toml);
            }
            if let Some(v) = &self.service {
                s += &format!("service = {}\n", toml_str(v));
            }
            if let Some(v) = &self.event_name {
                s += &format!("event_name = {}\n", toml_str(v));
            }
            if let Some(v) = &self.body_contains {
                s += &format!("body_contains = {}\n", toml_str(v));
            }
            let kvs: Vec<String> = self
                .all_attributes()
                .map(|(k, v)| format!("{} = {}", toml_str(k), v.toml()))
                .collect();
            if !kvs.is_empty() {
                s += &format!("attributes = {{ {} }}\n", kvs.join(", "));
            }
        }
        s
    }

    /// Whether the rule's match holds for `r`: every condition present (AND); none, every
    /// record.
    pub fn matches(&self, r: &Facts) -> bool {
        self.matches_facts(&RecordFacts::from(r))
    }

    /// [`RuleSpec::matches`] on the full view of a record.
    pub fn matches_facts(&self, r: &RecordFacts) -> bool {
        if let Some(s) = &self.severity
            && !s.contains(r.severity)
        {
            return false;
        }
        if let Some(svc) = &self.service
            && r.service.as_deref() != Some(svc.as_bytes())
        {
            return false;
        }
        if let Some(e) = &self.event_name {
            match &r.event_name {
                Some(got) if !got.is_empty() && got[..] == *e.as_bytes() => {}
                _ => return false,
            }
        }
        if let Some(needle) = &self.body_contains {
            match &r.body {
                Some(b) if contains(b, needle.as_bytes()) => {}
                _ => return false,
            }
        }
        self.all_attributes().all(|(k, v)| {
            r.attributes
                .iter()
                .any(|(rk, rv)| rk == k.as_bytes() && v.matches(rv))
        })
    }

    /// The group a match of this rule in `r` counts under, before the cap (`None` for a rule
    /// without `group_by`).
    pub fn group_key(&self, r: &RecordFacts) -> Option<GroupKey> {
        self.group_by.as_ref().map(|g| g.key(r))
    }
}

/// Whether `needle` occurs in `hay` (the empty needle everywhere).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\t' => out += "\\t",
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out += &format!("\\u{:04X}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The rules as one TOML file, in order.
pub fn rules_toml(rules: &[RuleSpec]) -> String {
    rules
        .iter()
        .map(RuleSpec::to_toml)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The resource attributes an `[enrich]` table may list, in the order the kernel adds them
/// (README, "Enrich").
pub const ENRICH_ATTRS: [&str; 4] = ["process.pid", "host.name", "container.id", "k8s.pod.uid"];

/// An `[enrich]` table: the resource attributes dt adds to every walked request's
/// ResourceLogs whose Resource does not carry them (at most one per rule set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrichSpec {
    /// Names among [`ENRICH_ATTRS`], distinct, non-empty, in the order the file lists them
    /// (which changes nothing: the kernel adds them in [`ENRICH_ATTRS`] order).
    pub resource_attributes: Vec<String>,
}

impl EnrichSpec {
    pub fn new(names: &[&str]) -> EnrichSpec {
        EnrichSpec {
            resource_attributes: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Whether the table lists `name`.
    pub fn lists(&self, name: &str) -> bool {
        self.resource_attributes.iter().any(|a| a == name)
    }

    /// The table as TOML.
    pub fn to_toml(&self) -> String {
        let names: Vec<String> = self
            .resource_attributes
            .iter()
            .map(|s| toml_str(s))
            .collect();
        format!("[enrich]\nresource_attributes = [{}]\n", names.join(", "))
    }
}

/// A rule file: the `[enrich]` table first (when there is one), then the rules in order.
pub fn rule_set_toml(enrich: Option<&EnrichSpec>, rules: &[RuleSpec]) -> String {
    match enrich {
        None => rules_toml(rules),
        Some(e) => format!("{}\n{}", e.to_toml(), rules_toml(rules)),
    }
}

/// What the rules look at in one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The resource's (last) `service.name`, when its value is a string.
    pub service: Option<String>,
    pub severity: i32,
    /// The body, when it is a string.
    pub body: Option<String>,
    /// The attributes with string values, in order.
    pub attributes: Vec<(String, String)>,
}

impl From<&ReceivedRecord> for Facts {
    /// A [`ReceivedRecord`] as the rules see it. Its service is empty when absent, and its
    /// non-string attribute values are rendered as `<type>:<value>`; both are taken as they are
    /// (no rule in the tests names an empty service or such a value).
    fn from(r: &ReceivedRecord) -> Facts {
        Facts {
            service: Some(r.service.clone()),
            severity: r.severity_number,
            body: r.body.clone(),
            attributes: r.attributes.clone(),
        }
    }
}

/// A record attribute's value as the rules see it (AnyValue semantics: of several oneof
/// fields the last one wins).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrValue {
    /// `string_value` (bytes as sent).
    Str(Vec<u8>),
    /// `int_value`.
    Int(i64),
    /// `bool_value`.
    Bool(bool),
    /// Any other value (double, bytes, array, kvlist), or none (an AnyValue with no value set,
    /// or a KeyValue without a value).
    Other,
}

impl AttrValue {
    pub fn str(s: &str) -> AttrValue {
        AttrValue::Str(s.as_bytes().to_vec())
    }

    /// A value as [`crate::record::render_value`] renders it: `int:N`, `bool:B` and the other
    /// `<type>:` forms back to their types (a string that reads like one of them is taken for
    /// it; no test sends such strings), anything else a string.
    pub fn from_rendered(v: &str) -> AttrValue {
        if let Some(i) = v.strip_prefix("int:").and_then(|i| i.parse().ok()) {
            return AttrValue::Int(i);
        }
        match v {
            "bool:true" => return AttrValue::Bool(true),
            "bool:false" => return AttrValue::Bool(false),
            _ => {}
        }
        if ["empty:", "double:", "bytes:", "other:"]
            .iter()
            .any(|p| v.starts_with(p))
        {
            return AttrValue::Other;
        }
        AttrValue::str(v)
    }
}

/// What the rules look at in one record, in full: strings as the bytes sent (dt compares
/// bytes; group values show them lossily), the event name, typed attribute values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFacts {
    /// The resource's (last) `service.name`, when its value is a string.
    pub service: Option<Vec<u8>>,
    pub severity: i32,
    /// The body, when it is a string.
    pub body: Option<Vec<u8>>,
    /// The (last) `event_name` field; absent and empty are the same.
    pub event_name: Option<Vec<u8>>,
    /// Every attribute, in order, with its value (the last `key` field of a KeyValue; a
    /// KeyValue without one has the empty key).
    pub attributes: Vec<(Vec<u8>, AttrValue)>,
}

impl RecordFacts {
    pub fn new(severity: i32) -> RecordFacts {
        RecordFacts {
            severity,
            ..Default::default()
        }
    }

    pub fn with_service(mut self, s: &str) -> RecordFacts {
        self.service = Some(s.as_bytes().to_vec());
        self
    }

    pub fn with_body(mut self, s: &str) -> RecordFacts {
        self.body = Some(s.as_bytes().to_vec());
        self
    }

    pub fn with_event_name(mut self, s: &str) -> RecordFacts {
        self.event_name = Some(s.as_bytes().to_vec());
        self
    }

    pub fn with_attr(mut self, k: &str, v: AttrValue) -> RecordFacts {
        self.attributes.push((k.as_bytes().to_vec(), v));
        self
    }
}

impl From<&Facts> for RecordFacts {
    /// String attributes only, no event name.
    fn from(f: &Facts) -> RecordFacts {
        RecordFacts {
            service: f.service.as_ref().map(|s| s.as_bytes().to_vec()),
            severity: f.severity,
            body: f.body.as_ref().map(|s| s.as_bytes().to_vec()),
            event_name: None,
            attributes: f
                .attributes
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), AttrValue::str(v)))
                .collect(),
        }
    }
}

impl From<&ReceivedRecord> for RecordFacts {
    /// A [`ReceivedRecord`] as the rules see it, as far as it tells: no event name (it has
    /// none); attribute values typed back from their rendering ([`AttrValue::from_rendered`]);
    /// the service absent when empty or not a string.
    fn from(r: &ReceivedRecord) -> RecordFacts {
        let service = match AttrValue::from_rendered(&r.service) {
            AttrValue::Str(s) if !s.is_empty() => Some(s),
            _ => None,
        };
        RecordFacts {
            service,
            severity: r.severity_number,
            body: r.body.as_ref().map(|s| s.as_bytes().to_vec()),
            event_name: None,
            attributes: r
                .attributes
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), AttrValue::from_rendered(v)))
                .collect(),
        }
    }
}

/// Where a record's evaluation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// No rule stopped evaluation: the record is kept.
    Kept,
    /// This drop rule (index) matched: the record is removed.
    Dropped(usize),
    /// This sample or rate_limit rule (index) matched: its counter or bucket decides.
    Decided(usize),
}

/// One record's evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// The rules (indices, in order) whose match held and whose `matched` goes up.
    pub matched: Vec<usize>,
    /// The redact rules among them: their edits apply if the record is kept.
    pub redactors: Vec<usize>,
    /// The `group_by` rules among them, with the group each counts the record under (before
    /// the cap).
    pub groups: Vec<(usize, GroupKey)>,
    pub end: End,
}

/// Evaluates `rules` in order on one record (README, "Evaluation, per record"): a match bumps
/// `matched`; count goes on; redact marks and goes on; drop, sample and rate_limit stop.
pub fn evaluate_record(rules: &[RuleSpec], r: &Facts) -> Evaluation {
    evaluate_facts(rules, &RecordFacts::from(r))
}

/// [`evaluate_record`] on the full view of a record.
pub fn evaluate_facts(rules: &[RuleSpec], r: &RecordFacts) -> Evaluation {
    let mut e = Evaluation {
        matched: Vec::new(),
        redactors: Vec::new(),
        groups: Vec::new(),
        end: End::Kept,
    };
    for (i, rule) in rules.iter().enumerate() {
        if !rule.matches_facts(r) {
            continue;
        }
        e.matched.push(i);
        if let Some(k) = rule.group_key(r) {
            e.groups.push((i, k));
        }
        match rule.action {
            Action::Count => {}
            Action::Redact { .. } => e.redactors.push(i),
            Action::Drop => {
                e.end = End::Dropped(i);
                break;
            }
            Action::Sample { .. } | Action::RateLimit { .. } => {
                e.end = End::Decided(i);
                break;
            }
        }
    }
    e
}

/// One rule's counters, as `stats` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub matched: u64,
    pub kept: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub redacted: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.matched += o.matched;
        self.kept += o.kept;
        self.dropped += o.dropped;
        self.dropped_bytes += o.dropped_bytes;
        self.redacted += o.redacted;
    }
}

/// The sample counters and rate-limit buckets, per rule name (README, "Sample" and "Rate
/// limit"): a sample rule keeps its match k (from 0, over the agent's life) iff k is a multiple
/// of `keep_one_in`; a rate_limit bucket starts full with `per_second` tokens and, as no time
/// passes in the model, is never refilled. And the groups of each `group_by` rule, per rule
/// name, over the agent's life (values take slots in the order they are first counted).
#[derive(Clone, Debug, Default)]
pub struct Decider {
    /// Matches so far of each sample rule.
    pub sample_matches: BTreeMap<String, u64>,
    /// Tokens taken so far from each rate_limit bucket.
    pub tokens_taken: BTreeMap<String, u64>,
    /// The groups of each `group_by` rule that counted anything.
    pub groups: BTreeMap<String, GroupTable>,
}

impl Decider {
    /// Rule `name`'s groups as `stats --json` names them (empty when it counted nothing).
    pub fn groups_of(&self, name: &str) -> BTreeMap<String, u64> {
        self.groups
            .get(name)
            .map(GroupTable::rendered)
            .unwrap_or_default()
    }
}

impl Decider {
    /// Whether `rule` (sample or rate_limit) keeps its next match.
    pub fn keep(&mut self, rule: &RuleSpec) -> bool {
        match rule.action {
            Action::Sample { keep_one_in } => {
                let k = self.sample_matches.entry(rule.name.clone()).or_default();
                let keep = k.is_multiple_of(keep_one_in);
                *k += 1;
                keep
            }
            Action::RateLimit { per_second } => {
                let taken = self.tokens_taken.entry(rule.name.clone()).or_default();
                let keep = *taken < per_second;
                if keep {
                    *taken += 1;
                }
                keep
            }
            _ => panic!("rule {} neither samples nor rate-limits", rule.name),
        }
    }
}

/// A record's settled fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The rule that removed the record, or `None` when it is kept.
    pub dropped_by: Option<usize>,
    /// Per rule (index) that the record moved, by how much.
    pub counts: Vec<(usize, Counts)>,
}

impl Evaluation {
    /// Settles a [`End::Decided`] end with `decider` and gives the counters the record moves
    /// (its whole encoding is `field_len` bytes): `matched` of every matching rule; `dropped`
    /// and `dropped_bytes` of the rule that removed it; `kept` of the sample or rate_limit rule
    /// that kept it; `redacted` of every redact rule that marked it, when it is kept. Counts
    /// the record in the groups of every matching `group_by` rule, in `decider`.
    pub fn settle(&self, rules: &[RuleSpec], decider: &mut Decider, field_len: u64) -> Settled {
        for (i, key) in &self.groups {
            let max = rules[*i].group_by.as_ref().map_or(0, GroupBy::max);
            decider
                .groups
                .entry(rules[*i].name.clone())
                .or_default()
                .count(key.clone(), max);
        }
        let mut counts: Vec<(usize, Counts)> = self
            .matched
            .iter()
            .map(|&i| {
                (
                    i,
                    Counts {
                        matched: 1,
                        ..Default::default()
                    },
                )
            })
            .collect();
        fn at(counts: &mut [(usize, Counts)], i: usize) -> &mut Counts {
            let j = counts.iter().position(|(r, _)| *r == i).expect("matched");
            &mut counts[j].1
        }
        let dropped_by = match self.end {
            End::Kept => None,
            End::Dropped(i) => Some(i),
            End::Decided(i) => {
                if decider.keep(&rules[i]) {
                    at(&mut counts, i).kept += 1;
                    None
                } else {
                    Some(i)
                }
            }
        };
        match dropped_by {
            Some(i) => {
                let c = at(&mut counts, i);
                c.dropped += 1;
                c.dropped_bytes += field_len;
            }
            None => {
                for &i in &self.redactors {
                    at(&mut counts, i).redacted += 1;
                }
            }
        }
        Settled { dropped_by, counts }
    }
}

/// The edits a kept record leaves with: the union of its redact rules' (README, "Redact").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Attribute keys to remove (whatever their value types).
    pub remove: BTreeSet<String>,
    /// Replace a string body by `*` of the same length (in bytes). (Another body becomes a
    /// string of `*` filling its bytes; the model's records carry string bodies only, and the
    /// property test's reference checks those bytes.)
    pub mask_body: bool,
}

impl Redaction {
    /// The edits of the redact rules `redactors` (indices into `rules`).
    pub fn of(rules: &[RuleSpec], redactors: &[usize]) -> Redaction {
        let mut r = Redaction::default();
        for &i in redactors {
            if let Action::Redact { remove, mask_body } = &rules[i].action {
                r.remove.extend(remove.iter().cloned());
                r.mask_body |= *mask_body;
            }
        }
        r
    }

    /// `r` as it leaves with these edits.
    pub fn apply(&self, r: &ReceivedRecord) -> ReceivedRecord {
        let mut out = r.clone();
        out.attributes.retain(|(k, _)| !self.remove.contains(k));
        if self.mask_body
            && let Some(b) = &out.body
        {
            out.body = Some("*".repeat(b.len()));
        }
        out
    }
}

/// What one agent makes of records evaluated in order.
#[derive(Clone, Debug, Default)]
pub struct Simulation {
    /// Per rule, in order.
    pub counts: Vec<Counts>,
    pub records: u64,
    pub records_dropped: u64,
    /// The records that leave, edited, in order.
    pub kept: Vec<ReceivedRecord>,
    /// Per input record, the rule that removed it.
    pub dropped_by: Vec<Option<usize>>,
    /// Per rule, in order: its groups as `stats --json` names them (empty without `group_by`).
    pub groups: Vec<BTreeMap<String, u64>>,
}

/// Evaluates `rules` over `records` in order, settling sample and rate_limit ends with a fresh
/// [`Decider`] (rules see each record as sent, as [`RecordFacts::from`] a [`ReceivedRecord`]
/// gives it; edits apply when it leaves).
pub fn simulate(rules: &[RuleSpec], records: &[SentRecord]) -> Simulation {
    let facts: Vec<RecordFacts> = records
        .iter()
        .map(|s| RecordFacts::from(&s.record))
        .collect();
    simulate_with_facts(rules, records, &facts)
}

/// [`simulate`], the rules seeing record `i` as `facts[i]` (e.g. from
/// [`crate::record::request_facts`], with event names and typed values).
pub fn simulate_with_facts(
    rules: &[RuleSpec],
    records: &[SentRecord],
    facts: &[RecordFacts],
) -> Simulation {
    assert_eq!(records.len(), facts.len(), "one RecordFacts per record");
    let mut decider = Decider::default();
    let mut out = Simulation {
        counts: vec![Counts::default(); rules.len()],
        ..Default::default()
    };
    for (s, f) in records.iter().zip(facts) {
        out.records += 1;
        let e = evaluate_facts(rules, f);
        let settled = e.settle(rules, &mut decider, s.field_len);
        for (i, c) in settled.counts {
            out.counts[i] += c;
        }
        if settled.dropped_by.is_some() {
            out.records_dropped += 1;
        } else {
            out.kept
                .push(Redaction::of(rules, &e.redactors).apply(&s.record));
        }
        out.dropped_by.push(settled.dropped_by);
    }
    out.groups = rules.iter().map(|r| decider.groups_of(&r.name)).collect();
    out
}

/// What one rule's counters must read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleExpect {
    pub name: String,
    pub action: Option<Action>,
    pub matched: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// `group_by` rules: matches per group, as `stats --json` names them (a group not listed
    /// counts 0).
    pub groups: BTreeMap<String, u64>,
}

/// What a run must produce.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    pub rules: Vec<RuleExpect>,
    /// Records walked.
    pub records: u64,
    pub records_dropped: u64,
    /// The records that must reach the receiver, in the order sent.
    pub kept: Vec<ReceivedRecord>,
    /// Per input record, whether it is dropped.
    pub dropped_mask: Vec<bool>,
}

impl Expected {
    /// Adds `other`'s counts and records after this one's (same rules, in the same order).
    /// Groups are added up too: exact while no rule reaches its `max_groups` (`other` was
    /// evaluated from no groups taken).
    pub fn merge(&mut self, other: &Expected) {
        if self.rules.is_empty() {
            self.rules = other
                .rules
                .iter()
                .map(|r| RuleExpect {
                    name: r.name.clone(),
                    action: r.action.clone(),
                    ..Default::default()
                })
                .collect();
        }
        assert_eq!(
            self.rules.len(),
            other.rules.len(),
            "merging different rule sets"
        );
        for (a, b) in self.rules.iter_mut().zip(&other.rules) {
            assert_eq!(a.name, b.name);
            a.matched += b.matched;
            a.dropped += b.dropped;
            a.dropped_bytes += b.dropped_bytes;
            for (k, n) in &b.groups {
                *a.groups.entry(k.clone()).or_default() += n;
            }
        }
        self.records += other.records;
        self.records_dropped += other.records_dropped;
        self.kept.extend(other.kept.iter().cloned());
        self.dropped_mask.extend(other.dropped_mask.iter().copied());
    }

    pub fn rule(&self, name: &str) -> &RuleExpect {
        self.rules
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rule {name} in the model"))
    }
}

/// [`simulate`] for rule sets of count and drop rules, as [`Expected`] (which has no `kept` or
/// `redacted` counters, so other actions are refused).
pub fn evaluate(rules: &[RuleSpec], records: &[SentRecord]) -> Expected {
    let facts: Vec<RecordFacts> = records
        .iter()
        .map(|s| RecordFacts::from(&s.record))
        .collect();
    evaluate_with_facts(rules, records, &facts)
}

/// [`evaluate`], the rules seeing record `i` as `facts[i]` (see [`simulate_with_facts`]).
pub fn evaluate_with_facts(
    rules: &[RuleSpec],
    records: &[SentRecord],
    facts: &[RecordFacts],
) -> Expected {
    for r in rules {
        assert!(
            matches!(r.action, Action::Count | Action::Drop),
            "evaluate models count and drop rules; {} is {}",
            r.name,
            r.action.as_str()
        );
    }
    let sim = simulate_with_facts(rules, records, facts);
    Expected {
        rules: rules
            .iter()
            .zip(&sim.counts)
            .zip(&sim.groups)
            .map(|((r, c), g)| RuleExpect {
                name: r.name.clone(),
                action: Some(r.action.clone()),
                matched: c.matched,
                dropped: c.dropped,
                dropped_bytes: c.dropped_bytes,
                groups: g.clone(),
            })
            .collect(),
        records: sim.records,
        records_dropped: sim.records_dropped,
        kept: sim.kept,
        dropped_mask: sim.dropped_by.iter().map(Option::is_some).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sev: i32, body: &str, attrs: &[(&str, &str)]) -> SentRecord {
        SentRecord {
            record: ReceivedRecord {
                service: "svc".into(),
                scope: "s".into(),
                severity_number: sev,
                body: Some(body.into()),
                attributes: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            field_len: 10,
        }
    }

    #[test]
    fn drop_stops_evaluation() {
        let rules = [
            RuleSpec::count("all"),
            RuleSpec::drop("debug").severity("<=DEBUG", 1..=8),
            RuleSpec::count("after"),
        ];
        let recs = [rec(5, "a", &[]), rec(9, "b", &[]), rec(0, "c", &[])];
        let e = evaluate(&rules, &recs);
        assert_eq!(e.rule("all").matched, 3);
        assert_eq!(e.rule("debug").matched, 1);
        assert_eq!(e.rule("debug").dropped_bytes, 10);
        assert_eq!(e.rule("after").matched, 2);
        assert_eq!(e.records_dropped, 1);
        assert_eq!(e.kept.len(), 2);
    }

    #[test]
    fn renders_toml() {
        let r = RuleSpec::drop("x")
            .severity("<INFO", 1..=8)
            .attribute("http.route", "/healthz");
        assert_eq!(
            r.to_toml(),
            "[[rule]]\nname = \"x\"\naction = \"drop\"\n[rule.match]\nseverity = \"<INFO\"\nattributes = { \"http.route\" = \"/healthz\" }\n"
        );
    }

    #[test]
    fn renders_enrich_first() {
        let e = EnrichSpec::new(&["host.name", "process.pid"]);
        let set = rule_set_toml(Some(&e), &[RuleSpec::count("c")]);
        assert_eq!(
            set,
            "[enrich]\nresource_attributes = [\"host.name\", \"process.pid\"]\n\n[[rule]]\nname = \"c\"\naction = \"count\"\n"
        );
        assert_eq!(rule_set_toml(None, &[]), "");
    }

    #[test]
    fn matching() {
        let facts = Facts {
            service: Some("checkout".into()),
            severity: 9,
            body: Some("a healthcheck".into()),
            attributes: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        };
        let mut r = RuleSpec::drop("x")
            .severity("INFO", 9..=12)
            .service("checkout")
            .body_contains("check")
            .attribute("k", "w");
        assert!(r.matches(&facts));
        r.service = Some("Checkout".into());
        assert!(!r.matches(&facts));
        r.service = None;
        r.attributes = vec![("k".into(), "x".into())];
        assert!(!r.matches(&facts));
    }

    #[test]
    fn typed_attributes_and_event_name() {
        let f = RecordFacts::new(9)
            .with_event_name("payment.failed")
            .with_attr("http.status_code", AttrValue::Int(503))
            .with_attr("code", AttrValue::str("503"))
            .with_attr("retry", AttrValue::Bool(true))
            .with_attr("n", AttrValue::Int(1))
            .with_attr("d", AttrValue::Other);
        let r = |rule: RuleSpec| rule.matches_facts(&f);
        assert!(r(RuleSpec::count("a").event_name("payment.failed")));
        assert!(!r(RuleSpec::count("a").event_name("payment")));
        assert!(r(
            RuleSpec::count("a").attribute_int("http.status_code", 503)
        ));
        assert!(!r(RuleSpec::count("a").attribute("http.status_code", "503")));
        assert!(!r(RuleSpec::count("a").attribute_int("code", 503)));
        assert!(r(RuleSpec::count("a").attribute("code", "503")));
        assert!(r(RuleSpec::count("a").attribute_bool("retry", true)));
        assert!(!r(RuleSpec::count("a").attribute_bool("retry", false)));
        assert!(!r(RuleSpec::count("a").attribute_bool("n", true)));
        assert!(!r(RuleSpec::count("a").attribute("d", "")));
        assert!(r(RuleSpec::count("a")
            .attribute("code", "503")
            .attribute_bool("retry", true)));
        // No event name (or an empty one) equals nothing.
        let none = RecordFacts::new(9);
        let empty = RecordFacts::new(9).with_event_name("");
        let rule = RuleSpec::count("a").event_name("x");
        assert!(!rule.matches_facts(&none) && !rule.matches_facts(&empty));
        assert_eq!(
            RuleSpec::count("a")
                .event_name("e")
                .attribute("s", "v")
                .attribute_int("i", -9223372036854775808)
                .attribute_bool("b", false)
                .group_by("attributes.http.route", Some(3))
                .to_toml(),
            "[[rule]]\nname = \"a\"\naction = \"count\"\ngroup_by = \"attributes.http.route\"\nmax_groups = 3\n[rule.match]\nevent_name = \"e\"\nattributes = { \"s\" = \"v\", \"i\" = -9223372036854775808, \"b\" = false }\n"
        );
    }

    #[test]
    fn group_values() {
        let f = RecordFacts::new(0)
            .with_service("svc")
            .with_attr("k", AttrValue::Int(-7))
            .with_attr("b", AttrValue::Bool(false))
            .with_attr("o", AttrValue::Other)
            .with_attr("k", AttrValue::str("last"))
            .with_attr("bad", AttrValue::Str(b"a\xffb".to_vec()))
            .with_attr("long", AttrValue::Str("日".repeat(30).into_bytes()));
        let key = |dim: &str| {
            RuleSpec::count("g")
                .group_by(dim, None)
                .group_key(&f)
                .expect("grouped")
                .render()
        };
        assert_eq!(key("service"), "svc");
        assert_eq!(key("severity"), "UNSPECIFIED");
        assert_eq!(key("event_name"), "__missing__");
        assert_eq!(key("attributes.k"), "last");
        assert_eq!(key("attributes.b"), "false");
        assert_eq!(key("attributes.o"), "__other__");
        assert_eq!(key("attributes.nope"), "__missing__");
        assert_eq!(key("attributes.bad"), "a\u{fffd}b");
        // 90 bytes: the first 64 (21 characters and one byte of the 22nd, not shown), then "…".
        assert_eq!(key("attributes.long"), format!("{}…", "日".repeat(21)));
        let f2 = RecordFacts::new(-3).with_attr("k", AttrValue::Int(i64::MIN));
        let g = RuleSpec::count("g").group_by("attributes.k", None);
        assert_eq!(
            g.group_key(&f2).map(|k| k.render()).as_deref(),
            Some("-9223372036854775808")
        );
        for (n, want) in [
            (1, "TRACE"),
            (8, "DEBUG"),
            (12, "INFO"),
            (13, "WARN"),
            (20, "ERROR"),
            (24, "FATAL"),
            (25, "UNSPECIFIED"),
            (-1, "UNSPECIFIED"),
        ] {
            assert_eq!(severity_level(n), want);
        }
    }

    #[test]
    fn groups_are_capped_in_first_counted_order() {
        let rules = [RuleSpec::count("g")
            .group_by("attributes.k", Some(2))
            .severity("INFO", 9..=12)];
        let rec = |v: Option<&str>| {
            let r = RecordFacts::new(9);
            match v {
                Some(v) => r.with_attr("k", AttrValue::str(v)),
                None => r,
            }
        };
        let facts = [
            rec(Some("a")),
            rec(None),
            rec(Some("b")),
            rec(Some("c")),
            rec(Some("a")),
            rec(Some("c")),
            RecordFacts::new(9).with_attr("k", AttrValue::Other),
            RecordFacts::new(1).with_attr("k", AttrValue::str("d")),
        ];
        let sent: Vec<SentRecord> = (0..facts.len()).map(|_| rec_(9)).collect();
        let e = evaluate_with_facts(&rules, &sent, &facts);
        let want: BTreeMap<String, u64> =
            [("a", 2), ("b", 1), ("__missing__", 1), ("__other__", 3)]
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect();
        assert_eq!(e.rule("g").groups, want);
        assert_eq!(e.rule("g").matched, 7);
        // Groups carry on in the Decider: a later value still finds no slot.
        let mut d = Decider::default();
        for f in &facts {
            evaluate_facts(&rules, f).settle(&rules, &mut d, 1);
        }
        evaluate_facts(&rules, &rec(Some("b"))).settle(&rules, &mut d, 1);
        evaluate_facts(&rules, &rec(Some("z"))).settle(&rules, &mut d, 1);
        assert_eq!(d.groups_of("g")["b"], 2);
        assert_eq!(d.groups_of("g")["__other__"], 4);
    }

    fn rec_(sev: i32) -> SentRecord {
        rec(sev, "", &[])
    }

    #[test]
    fn received_records_type_their_values_back() {
        let mut r = rec(
            9,
            "x",
            &[
                ("i", "int:-4"),
                ("b", "bool:true"),
                ("d", "double:1.5"),
                ("s", "int:x"),
            ],
        );
        r.record.service = String::new();
        let f = RecordFacts::from(&r.record);
        assert_eq!(f.service, None);
        assert_eq!(
            f.attributes
                .iter()
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>(),
            vec![
                AttrValue::Int(-4),
                AttrValue::Bool(true),
                AttrValue::Other,
                AttrValue::str("int:x")
            ]
        );
    }
}
