//! The tests' one model of rule evaluation (README, "Rules", "Evaluation, per record" and
//! "Severity"), written independently of dt's compiler and walker.
//!
//! - [`RuleSpec`]: one `[[rule]]` (name, [`Action`] with its parameters, and the match
//!   conditions, the severity one as a [`Severity`]: its TOML text and the SeverityNumbers the
//!   test means by it). It renders itself to TOML ([`RuleSpec::to_toml`], [`rules_toml`]) and
//!   decides in plain Rust which records it matches ([`RuleSpec::matches`]), so a test's
//!   expectations and the rule file it installs come from one description.
//! - [`Facts`]: what the rules look at in one record.
//! - [`evaluate_record`]: the rules in order over one record, first stopping rule wins: which
//!   rules matched, which redact rules marked it, and where evaluation ended ([`End`]).
//! - [`Decider`]: the sample counters and rate-limit buckets that settle a sample or rate_limit
//!   end; [`Evaluation::settle`] turns an evaluation into the record's fate and counter deltas
//!   ([`Counts`]); [`Redaction`] is the edits a kept record leaves with.
//! - [`simulate`] runs all of it over a sequence of records (one agent, records evaluated in
//!   order); [`evaluate`] is its count/drop summary as [`Expected`].

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

/// One `[[rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub action: Action,
    pub severity: Option<Severity>,
    /// Equals the resource's `service.name`.
    pub service: Option<String>,
    /// A substring of the string body (bytes, case-sensitive).
    pub body_contains: Option<String>,
    /// String attributes of the record: key equals value, each of them.
    pub attributes: Vec<(String, String)>,
}

impl RuleSpec {
    pub fn new(name: &str, action: Action) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            action,
            severity: None,
            service: None,
            body_contains: None,
            attributes: Vec::new(),
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

    pub fn body_contains(mut self, s: &str) -> RuleSpec {
        self.body_contains = Some(s.into());
        self
    }

    pub fn attribute(mut self, k: &str, v: &str) -> RuleSpec {
        self.attributes.push((k.into(), v.into()));
        self
    }

    /// The rule as a `[[rule]]` table: name, action and its parameters, then `[rule.match]`
    /// (only when some condition is present) with severity, service, body_contains and
    /// attributes in that order.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[[rule]]\nname = {}\naction = \"{}\"\n{}",
            toml_str(&self.name),
            self.action.as_str(),
            self.action.params_toml()
        );
        let has_match = self.severity.is_some()
            || self.service.is_some()
            || self.body_contains.is_some()
            || !self.attributes.is_empty();
        if has_match {
            s += "[rule.match]\n";
            if let Some(sev) = &self.severity {
                s += &format!("severity = {}\n", sev.toml);
            }
            if let Some(v) = &self.service {
                s += &format!("service = {}\n", toml_str(v));
            }
            if let Some(v) = &self.body_contains {
                s += &format!("body_contains = {}\n", toml_str(v));
            }
            if !self.attributes.is_empty() {
                let kvs: Vec<String> = self
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
                    .collect();
                s += &format!("attributes = {{ {} }}\n", kvs.join(", "));
            }
        }
        s
    }

    /// Whether the rule's match holds for `r`: every condition present (AND); none, every
    /// record.
    pub fn matches(&self, r: &Facts) -> bool {
        if let Some(s) = &self.severity
            && !s.contains(r.severity)
        {
            return false;
        }
        if let Some(svc) = &self.service
            && r.service.as_deref() != Some(svc.as_str())
        {
            return false;
        }
        if let Some(needle) = &self.body_contains {
            match &r.body {
                Some(b) if contains(b.as_bytes(), needle.as_bytes()) => {}
                _ => return false,
            }
        }
        self.attributes
            .iter()
            .all(|(k, v)| r.attributes.iter().any(|(rk, rv)| rk == k && rv == v))
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
    pub end: End,
}

/// Evaluates `rules` in order on one record (README, "Evaluation, per record"): a match bumps
/// `matched`; count goes on; redact marks and goes on; drop, sample and rate_limit stop.
pub fn evaluate_record(rules: &[RuleSpec], r: &Facts) -> Evaluation {
    let mut e = Evaluation {
        matched: Vec::new(),
        redactors: Vec::new(),
        end: End::Kept,
    };
    for (i, rule) in rules.iter().enumerate() {
        if !rule.matches(r) {
            continue;
        }
        e.matched.push(i);
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
/// passes in the model, is never refilled.
#[derive(Clone, Debug, Default)]
pub struct Decider {
    /// Matches so far of each sample rule.
    pub sample_matches: BTreeMap<String, u64>,
    /// Tokens taken so far from each rate_limit bucket.
    pub tokens_taken: BTreeMap<String, u64>,
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
    /// that kept it; `redacted` of every redact rule that marked it, when it is kept.
    pub fn settle(&self, rules: &[RuleSpec], decider: &mut Decider, field_len: u64) -> Settled {
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
    /// Replace a string body by `*` of the same length (in bytes).
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
}

/// Evaluates `rules` over `records` in order, settling sample and rate_limit ends with a fresh
/// [`Decider`] (rules see each record as sent; edits apply when it leaves).
pub fn simulate(rules: &[RuleSpec], records: &[SentRecord]) -> Simulation {
    let mut decider = Decider::default();
    let mut out = Simulation {
        counts: vec![Counts::default(); rules.len()],
        ..Default::default()
    };
    for s in records {
        out.records += 1;
        let e = evaluate_record(rules, &Facts::from(&s.record));
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
    for r in rules {
        assert!(
            matches!(r.action, Action::Count | Action::Drop),
            "evaluate models count and drop rules; {} is {}",
            r.name,
            r.action.as_str()
        );
    }
    let sim = simulate(rules, records);
    Expected {
        rules: rules
            .iter()
            .zip(&sim.counts)
            .map(|(r, c)| RuleExpect {
                name: r.name.clone(),
                action: Some(r.action.clone()),
                matched: c.matched,
                dropped: c.dropped,
                dropped_bytes: c.dropped_bytes,
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
}
