//! The tests' own model of rule evaluation (INTERFACE.md, "Evaluation, per record"), written
//! independently of dt's compiler and walker. A [`RuleSpec`] renders itself to TOML and also
//! decides, in plain Rust, which records it matches, so a test's expectations and the rule file
//! it installs come from one description.

use std::ops::RangeInclusive;

use crate::record::{ReceivedRecord, SentRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Count,
    Drop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Count => "count",
            Action::Drop => "drop",
        }
    }
}

/// One `[[rule]]` of action count or drop.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    pub action: Action,
    /// The TOML severity text and the SeverityNumber range the test means by it.
    pub severity: Option<(String, RangeInclusive<i32>)>,
    pub service: Option<String>,
    pub body_contains: Option<String>,
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

    /// `severity = "<text>"`, which the test states covers SeverityNumbers `range`
    /// (severity 0 never matches a severity condition).
    pub fn severity(mut self, text: &str, range: RangeInclusive<i32>) -> RuleSpec {
        self.severity = Some((text.into(), range));
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

    /// The rule as a `[[rule]]` table.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[[rule]]\nname = {}\naction = \"{}\"\n",
            toml_str(&self.name),
            self.action.as_str()
        );
        let has_match = self.severity.is_some()
            || self.service.is_some()
            || self.body_contains.is_some()
            || !self.attributes.is_empty();
        if has_match {
            s += "[rule.match]\n";
            if let Some((text, _)) = &self.severity {
                s += &format!("severity = {}\n", toml_str(text));
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

    /// Whether the rule's match holds for `r` (every present condition, AND).
    pub fn matches(&self, r: &ReceivedRecord) -> bool {
        if let Some((_, range)) = &self.severity
            && (r.severity_number == 0 || !range.contains(&r.severity_number))
        {
            return false;
        }
        if let Some(s) = &self.service
            && &r.service != s
        {
            return false;
        }
        if let Some(needle) = &self.body_contains {
            match &r.body {
                Some(b) if b.contains(needle.as_str()) => {}
                _ => return false,
            }
        }
        for (k, v) in &self.attributes {
            if !r.attributes.iter().any(|(rk, rv)| rk == k && rv == v) {
                return false;
            }
        }
        true
    }
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
                    action: r.action,
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

/// Evaluates `rules` over `records` as INTERFACE.md says: in order, a match bumps `matched`,
/// `count` goes on, `drop` drops and stops.
pub fn evaluate(rules: &[RuleSpec], records: &[SentRecord]) -> Expected {
    let mut e = Expected {
        rules: rules
            .iter()
            .map(|r| RuleExpect {
                name: r.name.clone(),
                action: Some(r.action),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for s in records {
        e.records += 1;
        let mut dropped = false;
        for (i, rule) in rules.iter().enumerate() {
            if !rule.matches(&s.record) {
                continue;
            }
            e.rules[i].matched += 1;
            if rule.action == Action::Drop {
                e.rules[i].dropped += 1;
                e.rules[i].dropped_bytes += s.field_len;
                dropped = true;
                break;
            }
        }
        e.dropped_mask.push(dropped);
        if dropped {
            e.records_dropped += 1;
        } else {
            e.kept.push(s.record.clone());
        }
    }
    e
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
}
