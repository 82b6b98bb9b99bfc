//! Random rule sets as [`RuleSpec`]s (README, "Rules" and "Severity"; nothing from dt's
//! compiler): the model renders them to TOML and matches them.

use super::{
    ATTR_KEYS, ATTR_VALUES, ATTRS, BOOL_KEYS, EVENT_NAMES, G, GROUP_DIMS, INT_ATTRS, NEEDLES,
    SERVICES, TYPED_LOOKALIKES,
};
use crate::model::{
    Action, ENRICH_ATTRS, EnrichSpec, GroupBy, GroupDim, RuleSpec, RuleValue, Severity,
};

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

/// `max_groups` values: the default, small ones (reached: later values count as `__other__`),
/// the largest.
const MAX_GROUPS: &[Option<u32>] = &[None, Some(1), Some(2), Some(3), Some(8), Some(1024)];

/// A random `group_by`, and the name a count rule with it takes: the name is tied to the
/// grouping (as to the action), so its groups carry on across rule sets like its counters.
fn grouping(g: &mut G, i: usize) -> (GroupBy, String) {
    let d = g.range(0, GROUP_DIMS.len() - 1);
    let m = g.weighted(&[40, 8, 20, 15, 10, 7]);
    let dim = GroupDim::parse(GROUP_DIMS[d]).expect("a dimension");
    let name = format!("group{d}m{}-{i}", MAX_GROUPS[m].unwrap_or(0));
    (
        GroupBy {
            dim,
            max_groups: MAX_GROUPS[m],
        },
        name,
    )
}

/// A typed attribute condition: an int or a bool under a key records give such values (and
/// other types), or a string that reads like one (which no int or bool matches).
fn typed_condition(g: &mut G) -> (String, RuleValue) {
    match g.weighted(&[50, 30, 20]) {
        0 => {
            let (k, values) = *g.pick(INT_ATTRS);
            (k.to_string(), RuleValue::Int(*g.pick(values)))
        }
        1 => (
            g.pick(BOOL_KEYS).to_string(),
            RuleValue::Bool(g.chance(0.6)),
        ),
        _ => {
            let k = if g.chance(0.5) {
                g.pick(INT_ATTRS).0
            } else {
                *g.pick(BOOL_KEYS)
            };
            (
                k.to_string(),
                RuleValue::Str(g.pick(TYPED_LOOKALIKES).to_string()),
            )
        }
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
                    // Keys records give values of any type (removed whatever the type).
                    let k = if g.chance(0.15) {
                        g.pick(BOOL_KEYS).to_string()
                    } else {
                        g.pick(ATTR_KEYS).to_string()
                    };
                    if !remove.contains(&k) {
                        remove.push(k);
                    }
                }
                let mask_body = remove.is_empty() || g.chance(0.4);
                Action::Redact { remove, mask_body }
            }
        };
        let i = g.range(0, 3);
        let (group_by, name) = if action == Action::Count && g.chance(0.35) {
            let (gb, name) = grouping(g, i);
            (Some(gb), name)
        } else {
            (None, name_for(&action, i))
        };
        if rules.iter().any(|r| r.name == name) {
            continue;
        }
        let mut r = RuleSpec::new(&name, action);
        r.group_by = group_by;
        // A rule without a match table takes every record: rare, or little else gets through
        // (common for a grouped count rule: it sees every value).
        let no_match = match (&r.action, &r.group_by) {
            (Action::Count, Some(_)) => 0.4,
            (Action::Count, None) => 0.15,
            _ => 0.04,
        };
        if !g.chance(no_match) {
            if g.chance(0.45) {
                r.severity = Some(severity(g));
            }
            if g.chance(0.25) {
                r.service = Some(g.pick(SERVICES).to_string());
            }
            if g.chance(0.12) {
                r.event_name = Some(g.pick(EVENT_NAMES).to_string());
            }
            if g.chance(0.3) {
                r.body_contains = Some(g.pick(NEEDLES).to_string());
            }
            if g.chance(0.3) {
                for _ in 0..g.range(1, 2) {
                    let (k, v) = if g.chance(0.3) {
                        typed_condition(g)
                    } else {
                        let (k, values) = *g.pick(ATTRS);
                        let v = if g.chance(0.9) {
                            g.pick(values)
                        } else {
                            g.pick(ATTR_VALUES)
                        };
                        (k.to_string(), RuleValue::Str(v.to_string()))
                    };
                    // One condition per key (a TOML table has each key once).
                    if r.all_attributes().any(|(rk, _)| rk == k) {
                        continue;
                    }
                    match v {
                        RuleValue::Str(v) => r.attributes.push((k, v)),
                        v => r.typed_attributes.push((k, v)),
                    }
                }
            }
        }
        rules.push(r);
    }
    rules
}

/// A random `[enrich]` table: all four attributes, or a random non-empty subset of them, in a
/// random order (container.id and k8s.pod.uid add nothing for a sender in no container).
pub fn enrich(g: &mut G) -> EnrichSpec {
    let mut names: Vec<&str> = if g.chance(0.25) {
        ENRICH_ATTRS.to_vec()
    } else {
        loop {
            let v: Vec<&str> = ENRICH_ATTRS
                .iter()
                .copied()
                .filter(|_| g.chance(0.5))
                .collect();
            if !v.is_empty() {
                break v;
            }
        }
    };
    g.shuffle(&mut names);
    EnrichSpec::new(&names)
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
