//! One round of the property test: a random rule set, and connections of random requests sent
//! under it, each with what dt must make of it.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use super::logs::{self, Chunking, Head};
use std::collections::BTreeMap;

use super::reference::{self, Counts, EnrichAttr, RefState, Sender};
use super::rules::{self, RuleConfig};
use super::wire::{self, Either, Field};
use super::{G, mix};
use crate::http::HttpRequest;
use crate::model::{EnrichSpec, RuleSpec, rule_set_toml};

/// What the generator may produce.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// `sample` rules.
    pub sample: bool,
    /// `redact` rules.
    pub redact: bool,
    /// Header order, header name case, Content-Type parameters, extra headers.
    pub http_variety: bool,
    /// Share of connections that write all their requests before reading any response, cut at
    /// random points across request boundaries.
    pub pipelined: f64,
    /// Share of requests made malformed.
    pub malformed: f64,
    /// Requests per round (one rule set), inclusive.
    pub cases_per_round: (usize, usize),
    /// Share of requests sent `Transfer-Encoding: chunked`, and the share of those with several
    /// data chunks (which pass through as `chunked`; the others have one and are walked).
    pub chunked: f64,
    pub several_chunks: f64,
    /// Share of rounds whose rule set has an `[enrich]` table.
    pub enrich: f64,
    /// Who sends the requests (what `[enrich]` adds).
    pub sender: Sender,
}

/// What must arrive for one request.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The body, exactly, except that [`Either`] ranges may also be all `*`.
    pub body: Vec<u8>,
    pub either: Vec<Either>,
    /// Acceptable heads: Content-Length rewritten to the new length (or, if the kernel could
    /// not remove the spare digits, zero-padded to the old width; a longer body takes the
    /// digits it needs); a chunked request's head unchanged.
    pub heads: Vec<Vec<u8>>,
    /// A chunked request: the exact bytes that must follow the head (the chunk framing), and
    /// where `body` starts in them (`either` ranges are offsets into `body`).
    pub chunked_wire: Option<(Vec<u8>, usize)>,
    /// Why dt must pass the request through byte for byte (`malformed`, `too_deep`, `enrich`
    /// when a resource `[enrich]` would insert does not fit), or `None` when it walks and edits
    /// it.
    pub passthrough: Option<&'static str>,
    /// What the receiver must decode (`None` for a request passed through, or one that keeps
    /// invalid UTF-8 in a string, which the receiver's `string`-typed decoder refuses).
    pub logs: Option<ExportLogsServiceRequest>,
    /// The receiver's answer: 200, or 400 when the body does not decode.
    pub status: u16,
    /// When the [`Either`] ranges masked (as dt masks every string of a masked body) decide
    /// whether the body decodes (invalid UTF-8 inside one of them): the other answer and what
    /// the receiver then decodes.
    pub alt: Option<(u16, Option<ExportLogsServiceRequest>)>,
    pub records: u64,
    pub records_dropped: u64,
    /// Per record: the rule that dropped it.
    pub dropped_by: Vec<Option<String>>,
    /// How much each rule's counters move (rules that move at all).
    pub counts: BTreeMap<String, Counts>,
    /// Attributes removed and bodies masked in kept records.
    pub attrs_removed: usize,
    pub bodies_masked: usize,
    /// Of those, bodies that are not one string, replaced whole.
    pub bodies_replaced: usize,
    /// ResourceLogs `[enrich]` inserted a resource into, and the bytes inserted.
    pub enriched: usize,
    pub inserted_bytes: u64,
    /// ResourceLogs `[enrich]` could not insert into (`totals.edit_failures`).
    pub edit_failures: u64,
}

#[derive(Clone, Debug)]
pub struct Case {
    /// Case number over the whole run.
    pub id: usize,
    /// The request's field tree (marked when valid).
    pub tree: Vec<Field>,
    pub head: Head,
    /// `Transfer-Encoding: chunked` framing, or `None` for Content-Length.
    pub chunking: Option<Chunking>,
    pub request: HttpRequest,
    /// Write boundaries (byte offsets of `request.bytes`), and the pause between writes.
    pub cuts: Vec<usize>,
    pub delay_ms: u64,
    /// Why the request passes through, and how it was made so (`None` for a request dt
    /// edits).
    pub malformed: Option<String>,
    pub expect: Expect,
}

#[derive(Clone, Debug)]
pub struct ConnPlan {
    pub cases: Vec<Case>,
    /// `Some(cuts)`: all requests are written back to back, cut at these offsets of the
    /// concatenation, before any response is read.
    pub pipelined: Option<Vec<usize>>,
}

#[derive(Clone, Debug)]
pub struct Round {
    pub index: usize,
    pub seed: u64,
    pub rules: Vec<RuleSpec>,
    /// The rule set's `[enrich]` table.
    pub enrich: Option<EnrichSpec>,
    /// The rule file: the `[enrich]` table, then the rules.
    pub toml: String,
    pub conns: Vec<ConnPlan>,
}

impl Expect {
    /// What must follow the head on the wire, and the ranges of it that may be all `*`.
    pub fn wire(&self) -> (&[u8], Vec<Either>) {
        match &self.chunked_wire {
            None => (&self.body, self.either.clone()),
            Some((wire, at)) => (
                wire,
                self.either
                    .iter()
                    .map(|e| Either {
                        off: e.off + at,
                        original: e.original.clone(),
                    })
                    .collect(),
            ),
        }
    }

    /// Whether dt counts the request in `log_requests` (every request it walks, whatever it
    /// then finds).
    pub fn log_request(&self) -> bool {
        self.passthrough != Some("chunked")
    }
}

impl Round {
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.conns.iter().flat_map(|c| c.cases.iter())
    }

    pub fn n_cases(&self) -> usize {
        self.conns.iter().map(|c| c.cases.len()).sum()
    }
}

/// The seed of round `index` of the run seeded `run_seed`.
pub fn round_seed(run_seed: u64, index: usize) -> u64 {
    mix(run_seed, index as u64 + 1)
}

fn http_request(head: &Head, body: &[u8], chunking: Option<&Chunking>) -> HttpRequest {
    let h = match chunking {
        None => head.render(&body.len().to_string()),
        Some(_) => head.render("chunked"),
    };
    let head_len = h.len();
    let mut bytes = h;
    match chunking {
        None => bytes.extend_from_slice(body),
        Some(c) => bytes.extend_from_slice(&c.frame(body)),
    }
    HttpRequest {
        bytes,
        head_len,
        payload: body.to_vec(),
    }
}

/// One request: a random valid one evaluated by the reference (which updates `state`), or one
/// the reference says dt must pass through untouched: made malformed on purpose (`cfg.malformed`
/// of the requests; when the change leaves it valid, another one), nested past dt's bound, or
/// with a ResourceLogs a resource `[enrich]` adds (`enrich`, the attributes it adds for this
/// sender) does not fit in. With `[enrich]`, some valid requests get a ResourceLogs made to
/// just fit or just not fit ([`logs::near_prefix_bound`]), a few around 64 ResourceLogs to
/// enrich ([`logs::more_resource_logs`]).
pub fn case(
    g: &mut G,
    id: usize,
    cfg: &GenConfig,
    rules: &[RuleSpec],
    enrich: &[EnrichAttr],
    state: &mut RefState,
) -> Case {
    let malform = g.chance(cfg.malformed);
    // 0: Content-Length, 1: one data chunk, 2: several.
    let framing = if g.chance(cfg.chunked) {
        if g.chance(cfg.several_chunks) { 2 } else { 1 }
    } else {
        0
    };
    // A chunked request's body is at least one byte per data chunk (a chunk of size 0 is the
    // last chunk): a shorter one goes with Content-Length.
    // Several data chunks need a body of two bytes at least.
    let chunking = |g: &mut G, len: usize| match framing {
        2 if len >= 2 => Some(Chunking::several(g, len)),
        0 => None,
        _ => (len >= 1).then(|| Chunking::one(g, len)),
    };
    // A request whose edits stay within dt's documented per-request limits (else it would
    // rightly pass through as edit_limit): another one otherwise.
    loop {
        let mut tree = logs::request(g);
        if !malform && !enrich.is_empty() {
            if g.chance(0.02) {
                let want = g.range(reference::MAX_ENRICHED - 2, reference::MAX_ENRICHED + 3);
                logs::more_resource_logs(g, &mut tree, enrich, want, logs::MAX_BODY);
            }
            if g.chance(0.12) {
                let padded = g.chance(0.25);
                logs::near_prefix_bound(g, &mut tree, enrich, padded, logs::MAX_BODY);
            }
        }
        let (body, what) = if malform {
            // Often a nested value to put the defect in (defects go at any depth).
            if g.chance(0.5) {
                let levels = g.range(2, 12);
                logs::insert_deep(g, &mut tree, levels);
            }
            // dt stops at the first of a defect and a message nested past its bound: a
            // malformed request stays within the bound, so that its reason is `malformed`.
            if wire::tree_depth(&tree) >= reference::MAX_DEPTH {
                continue;
            }
            let (body, what) = logs::malform(g, &mut tree);
            (body, Some(what))
        } else {
            (wire::encode(&tree), None)
        };
        // The oracle decides, not what the generator meant.
        if let Some(reason) = reference::passthrough(&body) {
            // Whether dt meets the defect (or the depth) or an insert that does not fit first
            // depends on where its walk finds each: no such requests.
            if reference::enrich_may_pass_through(&tree, enrich) {
                continue;
            }
            if what.is_none() && reason == "malformed" {
                panic!(
                    "generator bug: case {id}: the oracle refuses a request meant valid: {:?}\nbody {}",
                    crate::oracle::verdict(&body),
                    wire::hex(&body)
                );
            }
            let what = what
                .unwrap_or_else(|| format!("deep: messages nest {} deep", wire::tree_depth(&tree)));
            let ch = chunking(g, body.len());
            return passthrough_case(g, id, cfg, tree, body, reason, what, ch);
        }
        if malform {
            // The change left a valid request: make another.
            continue;
        }
        // The reference decodes with the OTLP types, whose strings must be UTF-8: a copy of
        // the tree with invalid UTF-8 replaced (same sizes; no rule can tell them apart).
        let mut clean = tree.clone();
        wire::sanitize_utf8(&mut clean, wire::Kind::Request);
        let sizes = wire::mark_request(&mut tree);
        wire::mark_request(&mut clean);
        let clean_body = wire::encode(&clean);
        assert_eq!(
            clean_body.len(),
            body.len(),
            "generator bug: sanitized size"
        );
        let decoded = ExportLogsServiceRequest::decode(&clean_body[..]).unwrap_or_else(|e| {
            panic!(
                "generator bug: case {id} does not decode: {e}\nbody {}",
                wire::hex(&clean_body)
            )
        });
        let mut st = state.clone();
        // The rules see the bytes sent (group values show invalid UTF-8 as it is).
        let mut out = reference::evaluate_body(&mut st, rules, &decoded, &body, &sizes);
        let removals = out.edits.remove.len();
        let masks = out.edits.mask.len() + out.edits.either.len();
        let records = sizes.len();
        if removals > EDIT_LIMIT || masks > EDIT_LIMIT || records > EDIT_LIMIT {
            continue;
        }
        // ResourceLogs whose insert does not fit go without, counted `edit_failures`.
        let (inserts, skipped) = reference::enrich_plan(&tree, enrich);
        reference::apply_enrichment(&mut out, &inserts);
        out.enrich_skipped = skipped;
        let mut head = logs::head(g, cfg.http_variety);
        let ch = chunking(g, body.len());
        if ch.is_some() {
            head = head.to_chunked(g, cfg.http_variety);
        }
        return valid_case(g, id, (tree, clean), body, (head, ch), out, state, st);
    }
}

/// dt's per-request edit limits (README, "Limits": 1024 removals, length rewrites and masked
/// bodies), with room to spare.
const EDIT_LIMIT: usize = 900;

/// A request dt must pass through byte for byte, counted under `reason`.
#[allow(clippy::too_many_arguments)]
fn passthrough_case(
    g: &mut G,
    id: usize,
    cfg: &GenConfig,
    tree: Vec<Field>,
    body: Vec<u8>,
    reason: &'static str,
    what: String,
    chunking: Option<Chunking>,
) -> Case {
    let mut head = logs::head(g, cfg.http_variety);
    if chunking.is_some() {
        head = head.to_chunked(g, cfg.http_variety);
    }
    let request = http_request(&head, &body, chunking.as_ref());
    let chunked_wire = chunking
        .is_some()
        .then(|| (request.bytes[request.head_len..].to_vec(), 0));
    let status = if ExportLogsServiceRequest::decode(&body[..]).is_ok() {
        200
    } else {
        400
    };
    let cuts = logs::cuts(g, request.len(), request.head_len);
    Case {
        id,
        tree,
        head,
        chunking,
        expect: Expect {
            body,
            either: Vec::new(),
            heads: vec![request.head().to_vec()],
            chunked_wire,
            passthrough: Some(reason),
            logs: None,
            status,
            alt: None,
            records: 0,
            records_dropped: 0,
            dropped_by: Vec::new(),
            counts: BTreeMap::new(),
            attrs_removed: 0,
            bodies_masked: 0,
            bodies_replaced: 0,
            enriched: 0,
            inserted_bytes: 0,
            edit_failures: 0,
        },
        request,
        cuts,
        delay_ms: 0,
        malformed: Some(format!("{reason}: {what}")),
    }
}

/// A valid request, evaluated by the reference from `state` to `after`.
#[allow(clippy::too_many_arguments)]
fn valid_case(
    g: &mut G,
    id: usize,
    (tree, clean): (Vec<Field>, Vec<Field>),
    body: Vec<u8>,
    (head, chunking): (Head, Option<Chunking>),
    out: reference::Outcome,
    state: &mut RefState,
    after: RefState,
) -> Case {
    let counts_before = std::mem::replace(state, after).counts;
    let mut counts = BTreeMap::new();
    for (name, after) in &state.counts {
        let b = counts_before.get(name).copied().unwrap_or_default();
        let d = Counts {
            matched: after.matched - b.matched,
            kept: after.kept - b.kept,
            dropped: after.dropped - b.dropped,
            dropped_bytes: after.dropped_bytes - b.dropped_bytes,
            redacted: after.redacted - b.redacted,
        };
        if d != Counts::default() {
            counts.insert(name.clone(), d);
        }
    }
    let attrs_removed = out
        .edits
        .remove
        .iter()
        .filter(|m| matches!(m, wire::Mark::Attr(..)))
        .count();
    let (exp_body, either) = wire::emit(&tree, &out.edits);
    let (clean_exp, _) = wire::emit(&clean, &out.edits);
    // The reference's own consistency: the edited bytes decode to the expected request, and
    // they are exactly the removed fields shorter and the inserted ones longer.
    assert_eq!(
        exp_body.len() as u64,
        body.len() as u64 - out.removed_bytes + out.inserted_bytes,
        "generator bug: case {id}: edited length"
    );
    assert_eq!(out.inserted_bytes, out.edits.inserted() as u64);
    assert_eq!(clean_exp.len(), exp_body.len(), "generator bug: case {id}");
    let redecoded = ExportLogsServiceRequest::decode(&clean_exp[..])
        .unwrap_or_else(|e| panic!("generator bug: case {id}: edited body does not decode: {e}"));
    assert!(
        redecoded == out.expected,
        "generator bug: case {id}: the edited body decodes differently from the reference"
    );
    // What the receiver decodes: the edited request, unless a string in it is not UTF-8 (then
    // it answers 400; the bytes are still checked exactly).
    let decodes = ExportLogsServiceRequest::decode(&exp_body[..]).is_ok();
    // With every "either" range masked, the body may decode where it did not (or the other way).
    let mut masked = exp_body.clone();
    for e in &either {
        masked[e.off..e.off + e.original.len()].fill(b'*');
    }
    let masked_decoded = ExportLogsServiceRequest::decode(&masked[..]).ok();
    let alt = (masked_decoded.is_some() != decodes)
        .then_some((if decodes { 400 } else { 200 }, masked_decoded));
    let request = http_request(&head, &body, chunking.as_ref());
    let mut heads = vec![head.render(&exp_body.len().to_string())];
    let width = body.len().to_string().len();
    let padded = head.render(&format!("{:0width$}", exp_body.len()));
    if padded != heads[0] {
        heads.push(padded);
    }
    let chunked_wire = chunking.as_ref().map(|c| {
        let resized = out.removed_bytes > 0 || out.inserted_bytes > 0;
        c.edited(body.len(), &exp_body, out.planned, resized)
    });
    if chunked_wire.is_some() {
        heads = vec![request.head().to_vec()];
    }
    let cuts = logs::cuts(g, request.len(), request.head_len);
    let delay_ms = if g.chance(0.05) { 1 } else { 0 };
    Case {
        id,
        tree,
        head,
        chunking,
        request,
        cuts,
        delay_ms,
        malformed: None,
        expect: Expect {
            body: exp_body,
            either,
            heads,
            chunked_wire,
            passthrough: None,
            logs: decodes.then_some(out.expected),
            status: if decodes { 200 } else { 400 },
            alt,
            records: out.records,
            records_dropped: out.records_dropped,
            dropped_by: out.dropped_by,
            counts,
            attrs_removed,
            bodies_masked: out.edits.mask.len(),
            bodies_replaced: out
                .edits
                .mask
                .iter()
                .filter(|m| matches!(m, wire::Mark::BodyValue(..)))
                .count(),
            enriched: out.enriched,
            inserted_bytes: out.inserted_bytes,
            edit_failures: out.enrich_skipped,
        },
    }
}

/// Round `index`: a rule set (registered in `state`), then its connections and requests, each
/// evaluated in send order. `first_case` numbers the requests.
pub fn round(
    index: usize,
    seed: u64,
    first_case: usize,
    cfg: &GenConfig,
    state: &mut RefState,
) -> Round {
    round_from(&mut G::new(seed), index, seed, first_case, cfg, state)
}

/// [`round`] with its decisions drawn from `g` (a fuzzer's bytes: [`G::from_bytes`]).
pub fn round_from(
    g: &mut G,
    index: usize,
    seed: u64,
    first_case: usize,
    cfg: &GenConfig,
    state: &mut RefState,
) -> Round {
    let rules = rules::rule_set(
        g,
        RuleConfig {
            sample: cfg.sample,
            redact: cfg.redact,
        },
    );
    state.install(&rules);
    let enrich = g.chance(cfg.enrich).then(|| rules::enrich(g));
    let toml = rule_set_toml(enrich.as_ref(), &rules);
    let adds = enrich
        .as_ref()
        .map_or_else(Vec::new, |e| reference::enrich_attrs(e, &cfg.sender));
    let n = g.range(cfg.cases_per_round.0, cfg.cases_per_round.1);
    let mut conns = Vec::new();
    let mut id = first_case;
    while id < first_case + n {
        let k = g.range(1, 6).min(first_case + n - id);
        let mut cases = Vec::new();
        for _ in 0..k {
            cases.push(case(g, id, cfg, &rules, &adds, state));
            id += 1;
        }
        let pipelined = if g.chance(cfg.pipelined) {
            let total: usize = cases.iter().map(|c| c.request.len()).sum();
            let mut cuts = Vec::new();
            let mut off = 0;
            for c in &cases {
                // Around every boundary, and anywhere.
                if off > 0 && g.chance(0.5) {
                    cuts.push((off + g.range(0, 6)).saturating_sub(3));
                }
                for x in &c.cuts {
                    if g.chance(0.5) {
                        cuts.push(off + x);
                    }
                }
                off += c.request.len();
            }
            cuts.retain(|&c| c > 0 && c < total);
            cuts.sort_unstable();
            cuts.dedup();
            Some(cuts)
        } else {
            None
        };
        conns.push(ConnPlan { cases, pipelined });
    }
    Round {
        index,
        seed,
        rules,
        enrich,
        toml,
        conns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator and the reference agree with themselves (every case asserts that its
    /// edited bytes decode to the reference's request), sample and redact included, and the
    /// cases cover what they should.
    #[test]
    fn generator_is_self_consistent() {
        let cfg = GenConfig {
            sample: true,
            redact: true,
            http_variety: true,
            pipelined: 0.1,
            malformed: 0.1,
            cases_per_round: (10, 20),
            chunked: 0.2,
            several_chunks: 0.3,
            enrich: 0.3,
            sender: Sender {
                pid: 4_000_000,
                host_name: b"dt-test-host".to_vec(),
                container_id: None,
                pod_uid: None,
            },
        };
        let mut state = RefState::default();
        let mut first = 0;
        let (mut masked, mut removed_attrs, mut kept_by_sample, mut malformed) = (0, 0, 0, 0);
        let (mut too_deep, mut bad_utf8) = (0, 0);
        let (mut one_chunk, mut several, mut one_chunk_malformed) = (0, 0, 0);
        let (mut event_matches, mut typed_matches) = (0, 0);
        // [enrich]: rounds with one, requests enriched, with ResourceLogs that go without
        // (overflow; at 64 inserts).
        let (mut enrich_rounds, mut enriched, mut overflow, mut too_many) = (0, 0, 0, 0);
        for i in 0..40 {
            let r = round(i, round_seed(7, i), first, &cfg, &mut state);
            first += r.n_cases();
            enrich_rounds += r.enrich.is_some() as usize;
            assert_eq!(r.toml.contains("[enrich]"), r.enrich.is_some());
            // Every attribute the sender has a value for, in every ResourceLogs that arrives.
            let adds: Vec<&str> = r.enrich.as_ref().map_or_else(Vec::new, |e| {
                reference::enrich_attrs(e, &cfg.sender)
                    .iter()
                    .map(|a| a.key)
                    .collect()
            });
            for c in r.cases() {
                enriched += (c.expect.enriched > 0) as usize;
                // ResourceLogs that go without: a prefix too narrow, or past 64 inserts.
                if c.expect.edit_failures > 0 {
                    overflow += 1;
                    too_many += (c.expect.enriched == reference::MAX_ENRICHED) as usize;
                    assert!(!adds.is_empty());
                }
                assert_ne!(c.expect.passthrough, Some("enrich"));
                if r.enrich.is_none() {
                    assert_eq!(c.expect.enriched, 0);
                }
                if let (None, Some(logs), 0) =
                    (c.expect.passthrough, &c.expect.logs, c.expect.edit_failures)
                {
                    for rl in &logs.resource_logs {
                        let keys: Vec<&str> = rl
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter().map(|kv| kv.key.as_str()))
                            .collect();
                        assert!(
                            adds.iter().all(|a| keys.contains(a)),
                            "case {}: {adds:?} not all in {keys:?}",
                            c.id
                        );
                    }
                }
                for rule in &r.rules {
                    let moved = c
                        .expect
                        .counts
                        .get(&rule.name)
                        .is_some_and(|d| d.matched > 0);
                    event_matches += (moved && rule.event_name.is_some()) as usize;
                    typed_matches += (moved && !rule.typed_attributes.is_empty()) as usize;
                }
                if c.malformed.is_some() {
                    malformed += 1;
                    assert_eq!(c.expect.body, c.request.payload);
                }
                too_deep += (c.expect.passthrough == Some("too_deep")) as usize;
                match &c.chunking {
                    Some(Chunking::One { .. }) => {
                        one_chunk += 1;
                        one_chunk_malformed += c.malformed.is_some() as usize;
                        let (wire, _) = c.expect.wire();
                        assert!(wire.ends_with(b"\r\n0\r\n\r\n"));
                    }
                    Some(Chunking::Several { .. }) => {
                        several += 1;
                        assert_ne!(c.expect.passthrough, Some("chunked"));
                        assert!(c.expect.log_request());
                        let (wire, _) = c.expect.wire();
                        assert!(wire.ends_with(b"\r\n0\r\n\r\n"));
                    }
                    None => {}
                }
                bad_utf8 += (c.expect.passthrough.is_none() && c.expect.logs.is_none()) as usize;
                if !c.expect.either.is_empty() || c.expect.body.contains(&b'*') {
                    masked += 1;
                }
                if c.expect.body.len() < c.request.payload.len() && c.expect.records_dropped == 0 {
                    removed_attrs += 1;
                }
            }
        }
        for (name, c) in &state.counts {
            if name.starts_with("sample") {
                kept_by_sample += c.kept;
            }
        }
        assert!(masked > 0 && removed_attrs > 0 && kept_by_sample > 0 && malformed > 0);
        assert!(
            event_matches > 0 && typed_matches > 0,
            "{event_matches} matches of event_name rules, {typed_matches} of typed attribute rules"
        );
        // Every grouped rule's groups add up to its matches; the special groups and cut values
        // come up.
        let mut all_groups: BTreeMap<String, u64> = BTreeMap::new();
        for name in state.group_by.keys() {
            let groups = state.groups(name);
            assert_eq!(
                groups.values().sum::<u64>(),
                state.counts[name].matched,
                "rule {name}: groups {groups:?}"
            );
            for (k, n) in groups {
                *all_groups.entry(k).or_default() += n;
            }
        }
        for k in [
            "__other__",
            "__missing__",
            "TRACE",
            "UNSPECIFIED",
            "true",
            "503",
            "-1",
        ] {
            assert!(
                all_groups.contains_key(k),
                "no group {k:?} in {all_groups:?}"
            );
        }
        assert!(
            all_groups.keys().any(|k| k.ends_with('…')),
            "no cut group value"
        );
        assert!(
            one_chunk > 0 && several > 0 && one_chunk_malformed > 0,
            "{one_chunk} single-chunk requests ({one_chunk_malformed} malformed), {several} of several chunks"
        );
        assert!(
            too_deep > 0 && bad_utf8 > 0,
            "{too_deep} too deep, {bad_utf8} with bad UTF-8"
        );
        println!(
            "[enrich]: {enrich_rounds} rounds, {enriched} requests enriched, with ResourceLogs \
             that go without: {overflow} ({too_many} at 64 inserts)"
        );
        assert!(
            enrich_rounds > 0 && enriched > 0 && overflow > 0,
            "{enrich_rounds} rounds with [enrich]: {enriched} requests enriched, {overflow} \
             with a ResourceLogs that goes without"
        );
    }
}
