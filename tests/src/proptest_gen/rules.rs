//! Random rule sets, rendered to TOML, with their own matching (INTERFACE.md, "Rule files" and
//! "Severity"; nothing from dt's compiler).

use super::{ATTR_KEYS, ATTR_VALUES, ATTRS, G, NEEDLES, SERVICES};
use crate::model::toml_str;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PAction {
    Count,
    Drop,
    Sample {
        keep_one_in: u64,
    },
    Redact {
        remove: Vec<String>,
        mask_body: bool,
    },
}

impl PAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            PAction::Count => "count",
            PAction::Drop => "drop",
            PAction::Sample { .. } => "sample",
            PAction::Redact { .. } => "redact",
        }
    }
}

/// A severity condition: its TOML value and the SeverityNumbers it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SevCond {
    /// The TOML value as written (a quoted string, or a bare integer).
    pub toml: String,
    pub lo: i32,
    pub hi: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PRule {
    pub name: String,
    pub action: PAction,
    pub severity: Option<SevCond>,
    pub service: Option<String>,
    pub body_contains: Option<String>,
    pub attributes: Vec<(String, String)>,
}

/// What the rules look at in one record (as decoded by prost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The resource's last `service.name`, when its value is a string.
    pub service: Option<String>,
    pub severity: i32,
    /// The body, when it is a string.
    pub body: Option<String>,
    /// The attributes with string values, in order.
    pub attributes: Vec<(String, String)>,
}

impl PRule {
    /// Whether every condition present holds (INTERFACE.md). A severity condition holds when
    /// the SeverityNumber is in its range; ranges are within 1..=24, or exactly 0 for
    /// `"UNSPECIFIED"`, so 0 matches only `"UNSPECIFIED"` and numbers outside 0..=24 (not
    /// SeverityNumbers at all) match no severity condition.
    pub fn matches(&self, r: &Facts) -> bool {
        if let Some(s) = &self.severity
            && !(s.lo..=s.hi).contains(&r.severity)
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

    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[[rule]]\nname = {}\naction = \"{}\"\n",
            toml_str(&self.name),
            self.action.as_str()
        );
        match &self.action {
            PAction::Sample { keep_one_in } => s += &format!("keep_one_in = {keep_one_in}\n"),
            PAction::Redact { remove, mask_body } => {
                if !remove.is_empty() {
                    let names: Vec<String> = remove.iter().map(|n| toml_str(n)).collect();
                    s += &format!("remove_attributes = [{}]\n", names.join(", "));
                }
                if *mask_body {
                    s += "mask_body = true\n";
                }
            }
            _ => {}
        }
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
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The rules as one file.
pub fn to_toml(rules: &[PRule]) -> String {
    rules
        .iter()
        .map(PRule::to_toml)
        .collect::<Vec<_>>()
        .join("\n")
}

const LEVELS: [(&str, i32); 6] = [
    ("TRACE", 1),
    ("DEBUG", 5),
    ("INFO", 9),
    ("WARN", 13),
    ("ERROR", 17),
    ("FATAL", 21),
];

/// A level name (in a random case) or a number 1..=24, with the range it stands for.
fn term(g: &mut G) -> (String, i32, i32) {
    if g.chance(0.7) {
        let (name, lo) = *g.pick(&LEVELS);
        let text = match g.range(0, 3) {
            0 | 1 => name.to_string(),
            2 => name.to_ascii_lowercase(),
            _ => name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 1 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect(),
        };
        (text, lo, lo + 3)
    } else {
        let n = g.range(1, 24) as i32;
        (n.to_string(), n, n)
    }
}

/// A severity condition in one of the contract's forms.
pub fn severity(g: &mut G) -> SevCond {
    loop {
        let (t, lo, hi) = term(g);
        let (toml, lo, hi) = match g.range(0, 7) {
            0 => (format!("\"{t}\""), lo, hi),
            1 => (format!("\"<{t}\""), 1, lo - 1),
            2 => (format!("\"<={t}\""), 1, hi),
            3 => (format!("\">{t}\""), hi + 1, 24),
            4 => (format!("\">={t}\""), lo, 24),
            5 => {
                let (t2, lo2, hi2) = term(g);
                let _ = lo2;
                (format!("\"{t}..{t2}\""), lo, hi2)
            }
            6 => {
                let n = g.range(1, 24) as i32;
                (n.to_string(), n, n)
            }
            _ => ("\"UNSPECIFIED\"".to_string(), 0, 0),
        };
        if lo <= hi {
            return SevCond { toml, lo, hi };
        }
    }
}

/// Switches for what the generator may use.
#[derive(Clone, Copy, Debug)]
pub struct RuleConfig {
    /// Generate `sample` rules.
    pub sample: bool,
    /// Generate `redact` rules.
    pub redact: bool,
}

/// The rule name for an action: names are tied to one action (and, for sample, one N), so a
/// name that comes back in a later rule set keeps meaning the same thing and its counters (and
/// its sample match count) carry on.
fn name_for(action: &PAction, i: usize) -> String {
    match action {
        PAction::Count => format!("count-{i}"),
        PAction::Drop => format!("drop-{i}"),
        PAction::Sample { keep_one_in } => format!("sample{keep_one_in}-{i}"),
        PAction::Redact { .. } => format!("redact-{i}"),
    }
}

/// A random rule set of 1..=8 rules with distinct names.
pub fn rule_set(g: &mut G, cfg: RuleConfig) -> Vec<PRule> {
    let n = g.range(1, 8);
    let mut rules: Vec<PRule> = Vec::new();
    while rules.len() < n {
        let weights = [
            30,
            35,
            if cfg.sample { 15 } else { 0 },
            if cfg.redact { 20 } else { 0 },
        ];
        let action = match g.weighted(&weights) {
            0 => PAction::Count,
            1 => PAction::Drop,
            2 => PAction::Sample {
                keep_one_in: g.range(1, 5) as u64,
            },
            _ => {
                let mut remove: Vec<String> = Vec::new();
                for _ in 0..g.range(0, 3) {
                    let k = g.pick(ATTR_KEYS).to_string();
                    if !remove.contains(&k) {
                        remove.push(k);
                    }
                }
                let mask_body = remove.is_empty() || g.chance(0.4);
                PAction::Redact { remove, mask_body }
            }
        };
        let name = name_for(&action, g.range(0, 3));
        if rules.iter().any(|r| r.name == name) {
            continue;
        }
        let mut r = PRule {
            name,
            action,
            severity: None,
            service: None,
            body_contains: None,
            attributes: Vec::new(),
        };
        // A rule without a match table takes every record: rare, or little else gets through.
        if !g.chance(if r.action == PAction::Count {
            0.15
        } else {
            0.04
        }) {
            if g.chance(0.45) {
                r.severity = Some(severity(g));
            }
            if g.chance(0.25) {
                r.service = Some(g.pick(SERVICES).to_string());
            }
            if g.chance(0.3) {
                r.body_contains = Some(g.pick(NEEDLES).to_string());
            }
            if g.chance(0.25) {
                for _ in 0..g.range(1, 2) {
                    let (k, values) = *g.pick(ATTRS);
                    if r.attributes.iter().all(|(rk, _)| rk != k) {
                        let v = if g.chance(0.9) {
                            g.pick(values)
                        } else {
                            g.pick(ATTR_VALUES)
                        };
                        r.attributes.push((k.to_string(), v.to_string()));
                    }
                }
            }
        }
        rules.push(r);
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_ranges() {
        let mut g = G::new(1);
        for _ in 0..2000 {
            let s = severity(&mut g);
            assert!(s.lo <= s.hi && s.hi <= 24, "{s:?}");
            assert!(s.lo >= 1 || (s.lo, s.hi) == (0, 0), "{s:?}");
        }
    }

    #[test]
    fn matching() {
        let facts = Facts {
            service: Some("checkout".into()),
            severity: 9,
            body: Some("a healthcheck".into()),
            attributes: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        };
        let mut r = PRule {
            name: "x".into(),
            action: PAction::Drop,
            severity: Some(SevCond {
                toml: "\"INFO\"".into(),
                lo: 9,
                hi: 12,
            }),
            service: Some("checkout".into()),
            body_contains: Some("check".into()),
            attributes: vec![("k".into(), "w".into())],
        };
        assert!(r.matches(&facts));
        r.service = Some("Checkout".into());
        assert!(!r.matches(&facts));
        r.service = None;
        r.attributes = vec![("k".into(), "x".into())];
        assert!(!r.matches(&facts));
    }
}
