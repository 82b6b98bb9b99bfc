//! The reference: what dt must make of a valid request under a rule set, computed from prost's
//! decoding of the request (protobuf merge semantics) and INTERFACE.md's evaluation rules.

use std::collections::{BTreeMap, BTreeSet};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};

use super::rules::{Facts, PAction, PRule};
use super::wire::{Edits, Mark, RecordSizes};

/// One rule's counters, as `stats` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub matched: u64,
    pub kept: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub redacted: u64,
}

/// What the reference carries from request to request for the agent's whole life: every rule
/// name's counters, and each sample rule's match count.
#[derive(Clone, Debug, Default)]
pub struct RefState {
    pub counts: BTreeMap<String, Counts>,
    /// Matches so far of each sample rule name (the `k` in "kept iff k % N == 0").
    pub sample_matches: BTreeMap<String, u64>,
    /// Each name's action (names are tied to one action).
    pub actions: BTreeMap<String, &'static str>,
}

impl RefState {
    /// Registers a rule set's names.
    pub fn install(&mut self, rules: &[PRule]) {
        for r in rules {
            self.counts.entry(r.name.clone()).or_default();
            let prev = self.actions.insert(r.name.clone(), r.action.as_str());
            assert!(
                prev.is_none_or(|p| p == r.action.as_str()),
                "rule name {} changed action",
                r.name
            );
        }
    }
}

/// What the reference says about one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The request the receiver must decode.
    pub expected: ExportLogsServiceRequest,
    /// The edits that turn the sent encoding into the one dt must send on.
    pub edits: Edits,
    pub records: u64,
    pub records_dropped: u64,
    /// Bytes removed from the body: dropped records' fields and removed attributes' fields.
    pub removed_bytes: u64,
    /// Per record, in order: `None` kept, `Some(rule)` dropped by that rule.
    pub dropped_by: Vec<Option<String>>,
}

fn string_of(v: Option<&AnyValue>) -> Option<&str> {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// What the rules see of every record of `req`, in order.
pub fn facts(req: &ExportLogsServiceRequest) -> Vec<Facts> {
    let mut out = Vec::new();
    for rl in &req.resource_logs {
        let service = rl
            .resource
            .as_ref()
            .and_then(|r| {
                r.attributes
                    .iter()
                    .rev()
                    .find(|kv| kv.key == "service.name")
            })
            .and_then(|kv| string_of(kv.value.as_ref()))
            .map(str::to_owned);
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                out.push(Facts {
                    service: service.clone(),
                    severity: r.severity_number,
                    body: string_of(r.body.as_ref()).map(str::to_owned),
                    attributes: r
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            string_of(kv.value.as_ref()).map(|v| (kv.key.clone(), v.to_owned()))
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

/// Evaluates `rules` on every record of `decoded` (whose encoding has `sizes`) and updates
/// `state`'s counters: in order, a match bumps `matched`; count goes on; redact marks and goes
/// on; drop drops and stops; sample keeps match k (from 0, per rule name, over the agent's life)
/// iff k % N == 0, and stops either way. Marks apply to kept records only.
pub fn evaluate(
    state: &mut RefState,
    rules: &[PRule],
    decoded: &ExportLogsServiceRequest,
    sizes: &[RecordSizes],
) -> Outcome {
    let facts = facts(decoded);
    assert_eq!(
        facts.len(),
        sizes.len(),
        "generator: prost decodes {} records, the tree has {}",
        facts.len(),
        sizes.len()
    );
    let mut edits = Edits::default();
    let mut out = Outcome {
        expected: decoded.clone(),
        edits: Edits::default(),
        records: facts.len() as u64,
        records_dropped: 0,
        removed_bytes: 0,
        dropped_by: Vec::new(),
    };
    // Per record: removed attribute names and mask_body, for kept records.
    let mut marks: Vec<(BTreeSet<String>, bool)> = Vec::new();
    for (ri, (f, size)) in facts.iter().zip(sizes).enumerate() {
        let mut dropped: Option<String> = None;
        let mut remove = BTreeSet::new();
        let mut mask = false;
        let mut redactors: Vec<&str> = Vec::new();
        for rule in rules {
            if !rule.matches(f) {
                continue;
            }
            let c = state.counts.get_mut(&rule.name).expect("installed");
            c.matched += 1;
            match &rule.action {
                PAction::Count => {}
                PAction::Redact {
                    remove: names,
                    mask_body,
                } => {
                    remove.extend(names.iter().cloned());
                    mask |= *mask_body;
                    redactors.push(&rule.name);
                }
                PAction::Drop => {
                    c.dropped += 1;
                    c.dropped_bytes += size.field_len;
                    dropped = Some(rule.name.clone());
                    break;
                }
                PAction::Sample { keep_one_in } => {
                    let k = state.sample_matches.entry(rule.name.clone()).or_default();
                    let keep = k.is_multiple_of(*keep_one_in);
                    *k += 1;
                    let c = state.counts.get_mut(&rule.name).expect("installed");
                    if keep {
                        c.kept += 1;
                    } else {
                        c.dropped += 1;
                        c.dropped_bytes += size.field_len;
                        dropped = Some(rule.name.clone());
                    }
                    break;
                }
            }
        }
        if dropped.is_some() {
            out.records_dropped += 1;
            out.removed_bytes += size.field_len;
            edits.remove.insert(Mark::Record(ri as u32));
            marks.push((BTreeSet::new(), false));
        } else {
            for name in &redactors {
                state.counts.get_mut(*name).expect("installed").redacted += 1;
            }
            marks.push((remove, mask));
        }
        out.dropped_by.push(dropped);
    }

    // The expected request: dropped records gone, marks applied to the kept ones.
    let mut ri = 0usize;
    for rl in &mut out.expected.resource_logs {
        for sl in &mut rl.scope_logs {
            let recs = std::mem::take(&mut sl.log_records);
            for mut r in recs {
                let i = ri;
                ri += 1;
                if out.dropped_by[i].is_some() {
                    continue;
                }
                let (remove, mask) = &marks[i];
                if !remove.is_empty() {
                    let mut kept_attrs = Vec::new();
                    for (ai, kv) in r.attributes.drain(..).enumerate() {
                        if remove.contains(&kv.key) {
                            edits.remove.insert(Mark::Attr(i as u32, ai as u32));
                            out.removed_bytes += sizes[i].attr_field_lens[ai];
                        } else {
                            kept_attrs.push(kv);
                        }
                    }
                    r.attributes = kept_attrs;
                }
                if *mask {
                    let n = sizes[i].body_strings;
                    if let Some(Some(Value::StringValue(s))) =
                        r.body.as_mut().map(|b| b.value.as_mut())
                    {
                        // The final string is the last string_value field of the body fields.
                        *s = "*".repeat(s.len());
                        assert!(n > 0, "generator: a string body without string fields");
                        edits.mask.insert(Mark::BodyString(i as u32, n - 1));
                        for k in 0..n - 1 {
                            edits.either.insert(Mark::BodyString(i as u32, k));
                        }
                    } else {
                        for k in 0..n {
                            edits.either.insert(Mark::BodyString(i as u32, k));
                        }
                    }
                }
                sl.log_records.push(r);
            }
        }
    }
    out.edits = edits;
    out
}

#[cfg(test)]
mod tests {
    use super::super::rules::SevCond;
    use super::*;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn req(sevs: &[i32]) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: sevs
                        .iter()
                        .map(|s| LogRecord {
                            severity_number: *s,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn sizes(n: usize) -> Vec<RecordSizes> {
        (0..n)
            .map(|_| RecordSizes {
                field_len: 4,
                attr_field_lens: vec![],
                body_strings: 0,
            })
            .collect()
    }

    #[test]
    fn sample_counts_over_requests() {
        let rule = PRule {
            name: "s".into(),
            action: PAction::Sample { keep_one_in: 3 },
            severity: Some(SevCond {
                toml: "\"INFO\"".into(),
                lo: 9,
                hi: 12,
            }),
            service: None,
            body_contains: None,
            attributes: vec![],
        };
        let rules = vec![rule];
        let mut st = RefState::default();
        st.install(&rules);
        let a = evaluate(&mut st, &rules, &req(&[9, 9, 1, 9]), &sizes(4));
        assert_eq!(a.dropped_by.iter().filter(|d| d.is_some()).count(), 2);
        let b = evaluate(&mut st, &rules, &req(&[9, 9]), &sizes(2));
        // Matches 3 and 4 overall (k = 3, 4): kept, dropped.
        assert_eq!(b.dropped_by, vec![None, Some("s".to_string())]);
        let c = st.counts["s"];
        assert_eq!(
            (c.matched, c.kept, c.dropped, c.dropped_bytes),
            (5, 2, 3, 12)
        );
    }
}
