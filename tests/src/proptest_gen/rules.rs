//! Random rule sets as [`RuleSpec`]s (README, "Rules" and "Severity"; nothing from dt's
//! compiler): the model renders them to TOML and matches them.

use super::{ATTR_KEYS, ATTR_VALUES, ATTRS, G, NEEDLES, SERVICES};
use crate::model::{Action, RuleSpec, Severity};

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
pub fn severity(g: &mut G) -> Severity {
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
            return Severity { toml, lo, hi };
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
fn name_for(action: &Action, i: usize) -> String {
    match action {
        Action::Count => format!("count-{i}"),
        Action::Drop => format!("drop-{i}"),
        Action::Sample { keep_one_in } => format!("sample{keep_one_in}-{i}"),
        Action::RateLimit { per_second } => format!("limit{per_second}-{i}"),
        Action::Redact { .. } => format!("redact-{i}"),
    }
}

/// A random rule set of 1..=8 rules with distinct names.
pub fn rule_set(g: &mut G, cfg: RuleConfig) -> Vec<RuleSpec> {
    let n = g.range(1, 8);
    let mut rules: Vec<RuleSpec> = Vec::new();
    while rules.len() < n {
        let weights = [
            30,
            35,
            if cfg.sample { 15 } else { 0 },
            if cfg.redact { 20 } else { 0 },
        ];
        let action = match g.weighted(&weights) {
            0 => Action::Count,
            1 => Action::Drop,
            2 => Action::Sample {
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
                Action::Redact { remove, mask_body }
            }
        };
        let name = name_for(&action, g.range(0, 3));
        if rules.iter().any(|r| r.name == name) {
            continue;
        }
        let mut r = RuleSpec::new(&name, action);
        // A rule without a match table takes every record: rare, or little else gets through.
        if !g.chance(if r.action == Action::Count {
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
}
