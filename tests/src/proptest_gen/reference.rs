//! The reference: what dt must make of a valid request under a rule set, computed from prost's
//! decoding of the request (protobuf merge semantics) and the rule model ([`crate::model`]).
//! The rules see each record as prost decodes the bytes sent with strings as bytes
//! ([`crate::record::body_facts`]): event names, typed attribute values, and the raw bytes group
//! values show.
//!
//! `[enrich]` ([`enrich_plan`], [`apply_enrichment`]): the resource field dt inserts at the end
//! of each ResourceLogs whose Resource lacks a listed attribute, or why the request passes
//! through `enrich`.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

use super::wire::{
    Edits, Field, Mark, RecordSizes, Val, fields_len, put_varint, varint_len, whole_body_stars,
};
pub use crate::model::Counts;
use crate::model::{
    Decider, ENRICH_ATTRS, End, EnrichSpec, Facts, GroupBy, Redaction, RuleSpec, evaluate_facts,
};

/// What the reference carries from request to request for the agent's whole life: every rule
/// name's counters, each sample rule's match count and each `group_by` rule's groups (in the
/// [`Decider`]).
#[derive(Clone, Debug, Default)]
pub struct RefState {
    pub counts: BTreeMap<String, Counts>,
    /// The sample counters (and rate-limit buckets), and the groups, per rule name.
    pub decider: Decider,
    /// Each name's action (names are tied to one action).
    pub actions: BTreeMap<String, &'static str>,
    /// Each `group_by` rule name's grouping (names are tied to one).
    pub group_by: BTreeMap<String, GroupBy>,
}

impl RefState {
    /// Registers a rule set's names.
    pub fn install(&mut self, rules: &[RuleSpec]) {
        for r in rules {
            self.counts.entry(r.name.clone()).or_default();
            let prev = self.actions.insert(r.name.clone(), r.action.as_str());
            assert!(
                prev.is_none_or(|p| p == r.action.as_str()),
                "rule name {} changed action",
                r.name
            );
            let grouped = self.group_by.get(&r.name);
            assert!(
                grouped == r.group_by.as_ref() || !self.decider.groups.contains_key(&r.name),
                "rule name {} changed group_by",
                r.name
            );
            if let Some(g) = &r.group_by {
                self.group_by.insert(r.name.clone(), g.clone());
            }
        }
    }

    /// Rule `name`'s groups over the agent's life, as `stats --json` names them (a group not
    /// listed counts 0).
    pub fn groups(&self, name: &str) -> BTreeMap<String, u64> {
        self.decider.groups_of(name)
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
    /// Bytes inserted by `[enrich]` (the resource fields, see [`apply_enrichment`]).
    pub inserted_bytes: u64,
    /// ResourceLogs that got a resource field, and those that could not (counted
    /// `edit_failures`, see [`enrich_plan`]).
    pub enriched: usize,
    pub enrich_skipped: u64,
    /// Per record, in order: `None` kept, `Some(rule)` dropped by that rule.
    pub dropped_by: Vec<Option<String>>,
    /// Whether dt's plan for the request has anything in it: a record a drop, sample or
    /// rate_limit rule stopped at (kept or not), a redaction, or a resource `[enrich]` inserts.
    /// (A request of several chunks is rewritten as one chunk then.)
    pub planned: bool,
}

/// `mask_body` on kept record `i` (README, "Redact"): a body field that is exactly one string
/// has it masked in place; any other with a value is replaced whole by a string of `*` of the
/// same size. `r`'s decoded body becomes what the last body field with a value leaves (the
/// fields of a message merge, and a string replaces what came before).
fn mask_body(i: usize, sizes: &RecordSizes, r: &mut LogRecord, edits: &mut Edits) {
    let rec = i as u32;
    let last = sizes.body_fields.iter().rposition(|f| f.content_len > 0);
    let mut stars = None;
    for (j, f) in sizes.body_fields.iter().enumerate() {
        let decides = Some(j) == last;
        match f.single {
            Some(k) => {
                let len = sizes.body_string_lens[k as usize];
                // An empty string has nothing to mask: dt plans no mask for it. One that a
                // later body field overrides may be masked or not (dt masks it).
                if len > 0 && decides {
                    edits.mask.insert(Mark::BodyString(rec, k));
                } else if len > 0 {
                    edits.either.insert(Mark::BodyString(rec, k));
                }
                if decides {
                    stars = Some(len as usize);
                }
            }
            None if f.content_len >= 2 => {
                edits.mask.insert(Mark::BodyValue(rec, j as u32));
                if decides {
                    stars = Some(whole_body_stars(f.content_len as usize));
                }
            }
            None => {}
        }
    }
    if let Some(n) = stars {
        r.body = Some(AnyValue {
            value: Some(Value::StringValue("*".repeat(n))),
        });
    }
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

/// [`evaluate_body`] for a request sent as prost encodes `decoded`.
pub fn evaluate(
    state: &mut RefState,
    rules: &[RuleSpec],
    decoded: &ExportLogsServiceRequest,
    sizes: &[RecordSizes],
) -> Outcome {
    evaluate_body(state, rules, decoded, &decoded.encode_to_vec(), sizes)
}

/// Evaluates `rules` on every record of the request sent as `body` (prost decodes it as
/// `decoded`, with any invalid UTF-8 replaced; its encoding has `sizes`) with the model
/// ([`evaluate_facts`] on [`crate::record::body_facts`] of `body`, settled with `state`'s
/// [`Decider`]: sample keeps match k, from 0, per rule name, over the agent's life, iff
/// k % N == 0; groups counted in record order) and updates `state`'s counters. Redact edits
/// apply to kept records only.
pub fn evaluate_body(
    state: &mut RefState,
    rules: &[RuleSpec],
    decoded: &ExportLogsServiceRequest,
    body: &[u8],
    sizes: &[RecordSizes],
) -> Outcome {
    let facts = crate::record::body_facts(body).expect("generator: a valid request");
    assert_eq!(
        facts.len(),
        self::facts(decoded).len(),
        "generator: the body and its decoding differ"
    );
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
        inserted_bytes: 0,
        enriched: 0,
        enrich_skipped: 0,
        dropped_by: Vec::new(),
        planned: false,
    };
    // Per record: the edits for kept records.
    let mut marks: Vec<Redaction> = Vec::new();
    for (ri, (f, size)) in facts.iter().zip(sizes).enumerate() {
        let e = evaluate_facts(rules, f);
        if !matches!(e.end, End::Kept) {
            out.planned = true;
        }
        let settled = e.settle(rules, &mut state.decider, size.field_len);
        for (i, c) in settled.counts {
            *state.counts.get_mut(&rules[i].name).expect("installed") += c;
        }
        let dropped = settled.dropped_by.map(|i| rules[i].name.clone());
        if dropped.is_some() {
            out.records_dropped += 1;
            out.removed_bytes += size.field_len;
            edits.remove.insert(Mark::Record(ri as u32));
            marks.push(Redaction::default());
        } else {
            marks.push(Redaction::of(rules, &e.redactors));
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
                let Redaction {
                    remove,
                    mask_body: mask,
                } = &marks[i];
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
                    mask_body(i, &sizes[i], &mut r, &mut edits);
                }
                sl.log_records.push(r);
            }
        }
    }
    if !edits.is_empty() {
        out.planned = true;
    }
    out.edits = edits;
    out
}

// ------------------------------------------------------------------------------------------
// [enrich]

/// The most ResourceLogs dt inserts a resource into in one request: a request with more that
/// need one passes through `enrich`.
pub const MAX_ENRICHED: usize = 64;

/// Who sends the requests: where the values `[enrich]` adds come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// The sending process's pid (its tgid).
    pub pid: u32,
    /// The agent's host name: `/proc/sys/kernel/hostname` without its trailing newline.
    pub host_name: Vec<u8>,
    /// The sender's container id and pod uid, from its cgroup (`None`: not in a container,
    /// nothing added).
    pub container_id: Option<Vec<u8>>,
    pub pod_uid: Option<Vec<u8>>,
}

impl Sender {
    /// This process on this host, in no container cgroup: the property test's sender.
    pub fn this_process() -> Sender {
        let host =
            std::fs::read("/proc/sys/kernel/hostname").expect("read /proc/sys/kernel/hostname");
        let host_name = host.strip_suffix(b"\n").unwrap_or(&host).to_vec();
        Sender {
            pid: std::process::id(),
            host_name,
            container_id: None,
            pod_uid: None,
        }
    }
}

/// The value of an attribute `[enrich]` adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enriched {
    Int(i64),
    Str(Vec<u8>),
}

/// One attribute `[enrich]` adds: its key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrichAttr {
    pub key: &'static str,
    pub value: Enriched,
}

impl EnrichAttr {
    /// The KeyValue's encoding (minimal varints): key, then value (`int_value` or
    /// `string_value`).
    pub fn encode(&self) -> Vec<u8> {
        let any = match &self.value {
            Enriched::Int(v) => {
                let mut b = vec![0x18];
                put_varint(&mut b, *v as u64, 0);
                b
            }
            Enriched::Str(s) => len_field(0x0a, s),
        };
        let mut kv = len_field(0x0a, self.key.as_bytes());
        kv.extend(len_field(0x12, &any));
        kv
    }

    /// The KeyValue a decoder sees.
    pub fn proto(&self) -> KeyValue {
        let value = match &self.value {
            Enriched::Int(v) => Value::IntValue(*v),
            Enriched::Str(s) => Value::StringValue(String::from_utf8_lossy(s).into_owned()),
        };
        KeyValue {
            key: self.key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }
}

/// `tag`, the minimal varint of `data`'s length, `data`.
fn len_field(tag: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    put_varint(&mut out, data.len() as u64, 0);
    out.extend_from_slice(data);
    out
}

/// What `spec` adds for `sender`'s requests, in the kernel's order (process.pid, host.name,
/// container.id, k8s.pod.uid): the listed attributes the sender has a value for (an empty host
/// name, container id or pod uid is none).
pub fn enrich_attrs(spec: &EnrichSpec, sender: &Sender) -> Vec<EnrichAttr> {
    ENRICH_ATTRS
        .iter()
        .filter(|k| spec.lists(k))
        .filter_map(|&key| {
            let value = match key {
                "process.pid" => Enriched::Int(sender.pid as i64),
                "host.name" => Enriched::Str(sender.host_name.clone()),
                "container.id" => Enriched::Str(sender.container_id.clone()?),
                _ => Enriched::Str(sender.pod_uid.clone()?),
            };
            if value == Enriched::Str(Vec::new()) {
                return None;
            }
            Some(EnrichAttr { key, value })
        })
        .collect()
}

/// The `resource` field (ResourceLogs field 1) holding `attrs`: `0x0a varint(R)` then, per
/// attribute, `0x0a varint(len(KV)) KV`. Empty for no attributes.
pub fn resource_field(attrs: &[EnrichAttr]) -> Vec<u8> {
    if attrs.is_empty() {
        return Vec::new();
    }
    let mut r = Vec::new();
    for a in attrs {
        r.extend(len_field(0x0a, &a.encode()));
    }
    len_field(0x0a, &r)
}

/// What dt inserts into one ResourceLogs.
#[derive(Clone, Debug, PartialEq)]
pub struct Insert {
    /// The ResourceLogs' index among the request's.
    pub rl: u32,
    /// The attributes added, in order.
    pub added: Vec<EnrichAttr>,
    /// The field inserted at the end of the ResourceLogs' contents.
    pub field: Vec<u8>,
}

/// The keys a ResourceLogs' Resources carry, as a decoder reads them: every KeyValue (field 1)
/// of every `resource` field (field 1), its key the last `key` field (empty when none), the
/// bytes as sent.
fn carried_keys(rl_fields: &[Field]) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    for res in rl_fields.iter().filter(|f| f.num == 1) {
        for kv in res.fields().into_iter().flatten().filter(|f| f.num == 1) {
            let key = kv
                .fields()
                .into_iter()
                .flatten()
                .filter(|f| f.num == 1)
                .filter_map(|f| match &f.val {
                    Val::Bytes { data, .. } => Some(data.clone()),
                    _ => None,
                })
                .next_back()
                .unwrap_or_default();
            keys.push(key);
        }
    }
    keys
}

/// The largest value a length prefix of `width` bytes holds.
pub fn prefix_cap(width: usize) -> u64 {
    if width >= 10 {
        u64::MAX
    } else {
        (1u64 << (7 * width)) - 1
    }
}

/// Where the length prefix of a message field stands: its content's length unedited and the
/// prefix's width in bytes (padded or not).
pub fn prefix_of(f: &Field) -> Option<(u64, usize)> {
    match &f.val {
        Val::Msg {
            fields,
            pad,
            bad_len: None,
            ..
        } => {
            let len = fields_len(fields) as u64;
            Some((len, (varint_len(len) + *pad as usize).min(10)))
        }
        _ => None,
    }
}

/// The attributes of `attrs` (in order) that the ResourceLogs `rl` of a valid request does not
/// carry: what dt adds to it.
pub fn missing(rl: &Field, attrs: &[EnrichAttr]) -> Vec<EnrichAttr> {
    let keys = carried_keys(
        rl.fields()
            .expect("generator: a valid request's ResourceLogs"),
    );
    attrs
        .iter()
        .filter(|a| !keys.iter().any(|k| k == a.key.as_bytes()))
        .cloned()
        .collect()
}

/// What `[enrich]` (adding `attrs`) does to the valid request `tree`: per ResourceLogs (a field
/// numbered 1) whose Resources lack some of `attrs`' keys, a resource field of the missing ones
/// (in `attrs`' order) inserted at the end of its contents; and how many ResourceLogs go
/// without (each counted `edit_failures`; the request is filtered as usual): one whose original
/// length plus the insert exceeds what its length prefix holds in the bytes it has (whatever the
/// request's removals), and every one after the first [`MAX_ENRICHED`] inserts.
pub fn enrich_plan(tree: &[Field], attrs: &[EnrichAttr]) -> (Vec<Insert>, u64) {
    let mut out = Vec::new();
    let mut skipped = 0;
    if attrs.is_empty() {
        return (out, 0);
    }
    for (i, rl) in tree.iter().filter(|f| f.num == 1).enumerate() {
        let added = missing(rl, attrs);
        if added.is_empty() {
            continue;
        }
        let field = resource_field(&added);
        let (len, width) = prefix_of(rl).expect("generator: a valid request's ResourceLogs");
        if len + field.len() as u64 > prefix_cap(width) || out.len() >= MAX_ENRICHED {
            skipped += 1;
            continue;
        }
        out.push(Insert {
            rl: i as u32,
            added,
            field,
        });
    }
    (out, skipped)
}

/// Whether `[enrich]` (adding `attrs`) might make dt pass the request `tree` (made malformed, or
/// nested too deep) through as `enrich`, whatever the Resources carry: a ResourceLogs near its
/// prefix's bound, or more than [`MAX_ENRICHED`] ResourceLogs. Which of the two reasons dt
/// finds first depends on where the walk meets them: the generator leaves such requests out.
pub fn enrich_may_pass_through(tree: &[Field], attrs: &[EnrichAttr]) -> bool {
    let most = resource_field(attrs).len() as u64;
    if most == 0 {
        return false;
    }
    let rls: Vec<&Field> = tree.iter().filter(|f| f.num == 1).collect();
    rls.len() > MAX_ENRICHED
        || rls
            .iter()
            .filter_map(|rl| prefix_of(rl))
            .any(|(len, width)| len + most > prefix_cap(width))
}

/// Applies `[enrich]`'s inserts to what the reference says about a request: the resource
/// fields inserted (the ResourceLogs' length prefixes count them, see [`Edits::append`]), the
/// attributes added after the Resource's own (decoders merge the `resource` fields), the
/// request edited.
pub fn apply_enrichment(out: &mut Outcome, inserts: &[Insert]) {
    for ins in inserts {
        let rl = &mut out.expected.resource_logs[ins.rl as usize];
        rl.resource
            .get_or_insert_with(Default::default)
            .attributes
            .extend(ins.added.iter().map(EnrichAttr::proto));
        out.edits
            .append
            .insert(Mark::ResourceLogs(ins.rl), ins.field.clone());
        out.inserted_bytes += ins.field.len() as u64;
    }
    out.enriched += inserts.len();
    if !inserts.is_empty() {
        out.planned = true;
    }
}

// ------------------------------------------------------------------------------------------
// Requests dt must pass through untouched

/// The deepest message nesting dt's walk checks (README, "What dt checks"): the request is
/// depth 0, a ResourceLogs 1, ScopeLogs 2, LogRecord 3, a record attribute (KeyValue) 4 and
/// its value 5; each array level adds an ArrayValue and an AnyValue, each kvlist level a
/// KeyValueList, a KeyValue and an AnyValue. A message one deeper passes through `too_deep`.
pub const MAX_DEPTH: u32 = 31;

/// Why dt must pass `body` through byte for byte (the `passthrough` reason), or `None` when it
/// walks and edits it.
///
/// - `malformed` when the real decoder ([`crate::oracle`]: prost, strings as bytes) rejects it;
/// - otherwise the walk of a structurally valid request, in dt's order (each ResourceLogs
///   first for its resource, then for its ScopeLogs; fields in order, depth first), stops at
///   the first of: a group wire type (3 or 4) in an unknown field, which prost skips but dt
///   refuses (`malformed`); a message nested deeper than [`MAX_DEPTH`] (`too_deep`). An
///   AnyValue that is exactly one `string_value` field (tag byte 0x0a, its length ending the
///   AnyValue) is read in place and takes no depth.
///
/// A request the decoder rejects is `malformed` whatever its depth: the generator never makes
/// one whose messages nest deeper than the bound (dt would stop at the depth first).
pub fn passthrough(body: &[u8]) -> Option<&'static str> {
    if !crate::oracle::structurally_valid(body) {
        return Some("malformed");
    }
    scan(body, 0, body.len(), Msg::Request, 0).err()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Msg {
    Request,
    ResourceLogs,
    Resource,
    ScopeLogs,
    Scope,
    LogRecord,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    EntityRef,
}

/// A varint at `at` ending before `end` (the decoder accepted the request: it is there).
fn read_varint(b: &[u8], at: usize, end: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        if at + i >= end {
            return None;
        }
        let x = b[at + i];
        if i == 9 && x > 1 {
            return None;
        }
        v |= ((x & 0x7f) as u64) << (7 * i);
        if x < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Whether `b[start..end]` is exactly one `string_value` field written with a one-byte tag.
fn single_string(b: &[u8], start: usize, end: usize) -> bool {
    if end - start < 2 || b[start] != 0x0a {
        return false;
    }
    match read_varint(b, start + 1, end) {
        Some((len, m)) => (start + 1 + m) as u64 + len == end as u64,
        None => false,
    }
}

/// The message dt walks for field `num` (length-delimited) of `parent`, if any; `None` for an
/// AnyValue read in place.
fn child(parent: Msg, num: u64, b: &[u8], start: usize, end: usize) -> Option<Msg> {
    let any = || (!single_string(b, start, end)).then_some(Msg::AnyValue);
    match (parent, num) {
        (Msg::Request, 1) => Some(Msg::ResourceLogs),
        (Msg::ResourceLogs, 1) => Some(Msg::Resource),
        (Msg::ResourceLogs, 2) => Some(Msg::ScopeLogs),
        (Msg::Resource, 1) | (Msg::Scope, 3) | (Msg::KeyValueList, 1) => Some(Msg::KeyValue),
        (Msg::Resource, 3) => Some(Msg::EntityRef),
        (Msg::ScopeLogs, 1) => Some(Msg::Scope),
        (Msg::ScopeLogs, 2) => Some(Msg::LogRecord),
        (Msg::LogRecord, 5) | (Msg::KeyValue, 2) | (Msg::ArrayValue, 1) => any(),
        (Msg::LogRecord, 6) => Some(Msg::KeyValue),
        (Msg::AnyValue, 5) => Some(Msg::ArrayValue),
        (Msg::AnyValue, 6) => Some(Msg::KeyValueList),
        _ => None,
    }
}

/// Walks the fields of the message `b[start..end]` at `depth`, following only the fields in
/// `only` (all when `None`) into their messages.
fn fields(
    b: &[u8],
    start: usize,
    end: usize,
    kind: Msg,
    depth: u32,
    only: Option<u64>,
) -> Result<(), &'static str> {
    let mut pos = start;
    while pos < end {
        let (tag, n) = read_varint(b, pos, end).expect("the decoder accepted the tag");
        pos += n;
        let (num, wt) = (tag >> 3, tag & 7);
        match wt {
            0 => pos += read_varint(b, pos, end).expect("a varint").1,
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let (len, m) = read_varint(b, pos, end).expect("a length");
                let (s, e) = (pos + m, pos + m + len as usize);
                pos = e;
                if only.is_some_and(|o| o != num) {
                    continue;
                }
                if let Some(c) = child(kind, num, b, s, e) {
                    scan(b, s, e, c, depth + 1)?;
                }
            }
            _ => return Err("malformed"),
        }
    }
    Ok(())
}

fn scan(b: &[u8], start: usize, end: usize, kind: Msg, depth: u32) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        return Err("too_deep");
    }
    if kind == Msg::ResourceLogs {
        // First for the resource (and every field's tag), then for the ScopeLogs.
        fields(b, start, end, kind, depth, Some(1))?;
        return fields(b, start, end, kind, depth, Some(2));
    }
    fields(b, start, end, kind, depth, None)
}

#[cfg(test)]
mod tests {
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
                body_string_lens: vec![],
                body_fields: vec![],
            })
            .collect()
    }

    use super::super::wire::{Kind, WT_EGROUP, WT_SGROUP, encode};

    /// A request of one record with one attribute whose value nests `levels` array (or kvlist)
    /// values, ending in an int (an AnyValue walked as a frame) or a string (read in place).
    fn nested(levels: usize, kvlist: bool, string_leaf: bool) -> Vec<u8> {
        let mut any = if string_leaf {
            vec![Field::bytes(1, "v")]
        } else {
            vec![Field::varint(3, 7)]
        };
        for _ in 0..levels {
            any = if kvlist {
                let kv = Field::msg(
                    1,
                    Kind::KeyValue,
                    vec![Field::bytes(1, "k"), Field::msg(2, Kind::AnyValue, any)],
                );
                vec![Field::msg(6, Kind::KeyValueList, vec![kv])]
            } else {
                vec![Field::msg(
                    5,
                    Kind::ArrayValue,
                    vec![Field::msg(1, Kind::AnyValue, any)],
                )]
            };
        }
        let attr = Field::msg(
            6,
            Kind::KeyValue,
            vec![Field::bytes(1, "a"), Field::msg(2, Kind::AnyValue, any)],
        );
        let rec = Field::msg(2, Kind::LogRecord, vec![attr]);
        let sl = Field::msg(2, Kind::ScopeLogs, vec![rec]);
        encode(&[Field::msg(1, Kind::ResourceLogs, vec![sl])])
    }

    #[test]
    fn depth_bound_as_dt_counts_it() {
        assert_eq!(MAX_DEPTH, dt_ebpf_common::walk::MAX_DEPTH);
        // The attribute's value is depth 5; an array level adds 2, a kvlist level 3; an int
        // leaf is one more frame, a lone string none.
        assert_eq!(passthrough(&nested(13, false, false)), None); // 5 + 26 = 31
        assert_eq!(passthrough(&nested(14, false, true)), Some("too_deep")); // array at 32
        assert_eq!(passthrough(&nested(8, true, false)), None); // 5 + 24 = 29
        assert_eq!(passthrough(&nested(9, true, true)), None); // last KeyValue at 31
        assert_eq!(passthrough(&nested(9, true, false)), Some("too_deep")); // int at 32
        assert!(crate::oracle::structurally_valid(&nested(14, false, true)));
    }

    #[test]
    fn groups_prost_skips_are_malformed_for_dt() {
        let group = |num: u64, wt: u8| {
            let mut f = Field::new(num, Val::Nothing);
            f.wt_override = Some(wt);
            f
        };
        let kv = Field::msg(
            6,
            Kind::KeyValue,
            vec![
                Field::bytes(1, "k"),
                group(9, WT_SGROUP),
                group(9, WT_EGROUP),
            ],
        );
        let rec = Field::msg(2, Kind::LogRecord, vec![kv]);
        let sl = Field::msg(2, Kind::ScopeLogs, vec![rec]);
        let body = encode(&[Field::msg(1, Kind::ResourceLogs, vec![sl])]);
        assert!(crate::oracle::structurally_valid(&body));
        assert_eq!(passthrough(&body), Some("malformed"));
        // A truncated body: the oracle refuses it.
        assert_eq!(passthrough(&body[..body.len() - 1]), Some("malformed"));
    }

    /// The rules' view of the bytes sent: the last event_name, typed values as prost decodes
    /// them (negative ints in 10 bytes, a bool written as 2, the last of two oneof members, two
    /// value fields merged), invalid UTF-8 kept for group values.
    #[test]
    fn record_facts_from_the_wire() {
        use crate::model::{AttrValue, RuleSpec};
        let kv = |k: &str, any: Vec<Field>| {
            Field::msg(
                6,
                Kind::KeyValue,
                vec![Field::bytes(1, k), Field::msg(2, Kind::AnyValue, any)],
            )
        };
        let rec = Field::msg(
            2,
            Kind::LogRecord,
            vec![
                Field::bytes(12, "payment.failed"),
                kv("i", vec![Field::varint(3, -5i64 as u64)]),
                Field::bytes(12, "login"),
                kv("b", vec![Field::varint(2, 2)]),
                kv("m", vec![Field::varint(3, 503), Field::bytes(1, "503")]),
                Field::msg(
                    6,
                    Kind::KeyValue,
                    vec![
                        Field::bytes(1, "v"),
                        Field::msg(2, Kind::AnyValue, vec![Field::varint(3, 1)]),
                        Field::msg(2, Kind::AnyValue, vec![]),
                    ],
                ),
                kv("s", vec![Field::bytes(1, b"a\xff".to_vec())]),
                Field::msg(6, Kind::KeyValue, vec![Field::bytes(1, "none")]),
            ],
        );
        let svc = Field::msg(
            1,
            Kind::Resource,
            vec![Field::msg(
                1,
                Kind::KeyValue,
                vec![
                    Field::bytes(1, "service.name"),
                    Field::msg(2, Kind::AnyValue, vec![Field::bytes(1, "checkout")]),
                ],
            )],
        );
        let sl = Field::msg(2, Kind::ScopeLogs, vec![rec]);
        let body = encode(&[Field::msg(1, Kind::ResourceLogs, vec![sl, svc])]);
        let f = &crate::record::body_facts(&body).expect("valid")[0];
        assert_eq!(f.service.as_deref(), Some(&b"checkout"[..]));
        assert_eq!(f.event_name.as_deref(), Some(&b"login"[..]));
        let values: Vec<(&[u8], &AttrValue)> =
            f.attributes.iter().map(|(k, v)| (&k[..], v)).collect();
        assert_eq!(
            values,
            vec![
                (&b"i"[..], &AttrValue::Int(-5)),
                (b"b", &AttrValue::Bool(true)),
                (b"m", &AttrValue::str("503")),
                (b"v", &AttrValue::Int(1)),
                (b"s", &AttrValue::Str(b"a\xff".to_vec())),
                (b"none", &AttrValue::Other),
            ]
        );
        let key = |dim: &str| {
            RuleSpec::count("g")
                .group_by(dim, None)
                .group_key(f)
                .map(|k| k.render())
                .unwrap()
        };
        assert_eq!(key("attributes.s"), "a\u{fffd}");
        assert_eq!(key("attributes.b"), "true");
        assert_eq!(key("attributes.none"), "__other__");
        assert_eq!(key("event_name"), "login");
        assert!(
            !RuleSpec::count("e")
                .event_name("payment.failed")
                .matches_facts(f)
        );
        assert!(
            RuleSpec::count("b")
                .attribute_bool("b", true)
                .matches_facts(f)
        );
        assert!(
            !RuleSpec::count("m")
                .attribute_int("m", 503)
                .matches_facts(f)
        );
    }

    fn sender() -> Sender {
        Sender {
            pid: 4242,
            host_name: b"h".to_vec(),
            container_id: None,
            pod_uid: None,
        }
    }

    fn res_kv(key: &str, any: Option<Vec<Field>>) -> Field {
        let mut f = vec![Field::bytes(1, key)];
        if let Some(a) = any {
            f.push(Field::msg(2, Kind::AnyValue, a));
        }
        Field::msg(1, Kind::KeyValue, f)
    }

    fn resource(kvs: Vec<Field>) -> Field {
        Field::msg(1, Kind::Resource, kvs)
    }

    fn one_record() -> Field {
        let rec = Field::msg(2, Kind::LogRecord, vec![Field::varint(2, 9)]);
        Field::msg(2, Kind::ScopeLogs, vec![rec])
    }

    /// The bytes of the resource field for pid 4242 and host "h", by hand.
    const PID_AND_HOST: &[u8] = &[
        0x0a, 38, // resource, 38 bytes
        0x0a, 18, // KeyValue, 18 bytes
        0x0a, 11, b'p', b'r', b'o', b'c', b'e', b's', b's', b'.', b'p', b'i', b'd', //
        0x12, 3, 0x18, 0x92, 0x21, // int_value 4242
        0x0a, 16, // KeyValue, 16 bytes
        0x0a, 9, b'h', b'o', b's', b't', b'.', b'n', b'a', b'm', b'e', //
        0x12, 3, 0x0a, 1, b'h', // string_value "h"
    ];

    /// What each ResourceLogs gets: the attributes its Resources (all of them) lack, whatever
    /// the carried ones' values; only exact keys count; the rest of the listed ones in the
    /// fixed order, at the end of its contents, its prefix in the width it had.
    #[test]
    fn enrich_inserts_what_each_resource_lacks() {
        let spec = EnrichSpec::new(&["k8s.pod.uid", "host.name", "container.id", "process.pid"]);
        let attrs = enrich_attrs(&spec, &sender());
        assert_eq!(
            attrs.iter().map(|a| a.key).collect::<Vec<_>>(),
            vec!["process.pid", "host.name"]
        );
        assert_eq!(resource_field(&attrs), PID_AND_HOST);
        let rl = |fields: Vec<Field>| Field::msg(1, Kind::ResourceLogs, fields);
        let mut tree = vec![
            // No resource: both.
            rl(vec![one_record()]),
            // process.pid as a string: host.name only.
            rl(vec![
                resource(vec![res_kv(
                    "process.pid",
                    Some(vec![Field::bytes(1, "1")]),
                )]),
                one_record(),
            ]),
            // Two resources, one with host.name (no value), the other process.pid (an int):
            // nothing.
            rl(vec![
                resource(vec![res_kv("host.name", None)]),
                one_record(),
                resource(vec![res_kv("process.pid", Some(vec![Field::varint(3, 7)]))]),
            ]),
            // Near misses: both. Its prefix padded.
            {
                let mut f = rl(vec![resource(vec![
                    res_kv("Process.pid", Some(vec![])),
                    res_kv("host.name ", None),
                ])]);
                if let Val::Msg { pad, .. } = &mut f.val {
                    *pad = 1;
                }
                f
            },
        ];
        let body = encode(&tree);
        let sizes = super::super::wire::mark_request(&mut tree);
        let (inserts, skipped) = enrich_plan(&tree, &attrs);
        assert_eq!(skipped, 0, "fits");
        assert_eq!(
            inserts
                .iter()
                .map(|i| (i.rl, i.added.iter().map(|a| a.key).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
            vec![
                (0, vec!["process.pid", "host.name"]),
                (1, vec!["host.name"]),
                (3, vec!["process.pid", "host.name"]),
            ]
        );
        let decoded = ExportLogsServiceRequest::decode(&body[..]).expect("valid");
        let mut st = RefState::default();
        let mut out = evaluate_body(&mut st, &[], &decoded, &body, &sizes);
        assert!(!out.planned);
        apply_enrichment(&mut out, &inserts);
        assert!(out.planned && out.enriched == 3);
        let (got, _) = super::super::wire::emit(&tree, &out.edits);
        assert_eq!(got.len() as u64, body.len() as u64 + out.inserted_bytes);
        // The first ResourceLogs: its contents, then the insert, its prefix one byte still.
        let first = encode(std::slice::from_ref(&tree[0]));
        let n = first.len() - 2;
        assert_eq!(got[0..2], [0x0a, (n + PID_AND_HOST.len()) as u8]);
        assert_eq!(got[2..2 + n], first[2..]);
        assert_eq!(got[2 + n..2 + n + PID_AND_HOST.len()], *PID_AND_HOST);
        // The last one: a two-byte prefix, and the insert ends the body.
        assert!(got.ends_with(PID_AND_HOST));
        let last = encode(std::slice::from_ref(&tree[3]));
        let total = last.len() - 3 + PID_AND_HOST.len();
        let tail = &got[got.len() - total - 3..got.len() - total];
        assert_eq!(
            tail,
            [0x0a, 0x80 | (total as u8 & 0x7f), (total >> 7) as u8]
        );
        let redecoded = ExportLogsServiceRequest::decode(&got[..]).expect("decodes");
        assert_eq!(redecoded, out.expected);
        let keys = |i: usize| -> Vec<String> {
            out.expected.resource_logs[i]
                .resource
                .as_ref()
                .map(|r| r.attributes.iter().map(|kv| kv.key.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(keys(0), vec!["process.pid", "host.name"]);
        assert_eq!(keys(1), vec!["process.pid", "host.name"]);
        assert_eq!(keys(2), vec!["host.name", "process.pid"]);
        assert_eq!(
            keys(3),
            vec!["Process.pid", "host.name ", "process.pid", "host.name"]
        );
        // Only what the sender has: container.id and k8s.pod.uid alone add nothing.
        let none = enrich_attrs(
            &EnrichSpec::new(&["container.id", "k8s.pod.uid"]),
            &sender(),
        );
        assert!(none.is_empty());
        assert_eq!(enrich_plan(&tree, &none).0.len(), 0);
    }

    /// A ResourceLogs whose original length plus the insert exceeds its prefix's width goes
    /// without (removals do not count); a padded prefix holds more; past 64 inserts, the
    /// ResourceLogs go without too. Each counts one `edit_failures`.
    #[test]
    fn enrich_skips_what_does_not_fit() {
        let attrs = enrich_attrs(&EnrichSpec::new(&["process.pid", "host.name"]), &sender());
        let add = PID_AND_HOST.len();
        let rl_of = |len: usize, pad: u8| {
            // An unknown bytes field (number 4) of `len` bytes in all.
            let data = (1..=3)
                .map(|k| len - 1 - k)
                .find(|&n| varint_len(n as u64) == len - 1 - n)
                .expect("a length");
            let mut f = Field::msg(
                1,
                Kind::ResourceLogs,
                vec![Field::bytes(4, vec![0u8; data])],
            );
            assert_eq!(fields_len(f.fields().unwrap()), len);
            if let Val::Msg { pad: p, .. } = &mut f.val {
                *p = pad;
            }
            f
        };
        let plan = |tree: &[Field]| {
            let (inserts, skipped) = enrich_plan(tree, &attrs);
            (inserts.len(), skipped)
        };
        assert_eq!(plan(&[rl_of(127 - add, 0)]), (1, 0));
        assert_eq!(plan(&[rl_of(128 - add, 0)]), (0, 1));
        assert_eq!(plan(&[rl_of(128 - add, 1)]), (1, 0));
        assert_eq!(
            plan(&[rl_of(128 - add, 0), rl_of(127 - add, 0)]),
            (1, 1),
            "the next one still gets its insert"
        );
        assert!(enrich_may_pass_through(&[rl_of(128 - add, 0)], &attrs));
        assert!(!enrich_may_pass_through(&[rl_of(128 - add, 1)], &attrs));
        // 16383 in two bytes.
        assert_eq!(plan(&[rl_of(16383 - add, 0)]), (1, 0));
        assert_eq!(plan(&[rl_of(16384 - add, 0)]), (0, 1));
        let many = |n: usize| vec![Field::msg(1, Kind::ResourceLogs, vec![]); n];
        assert_eq!(plan(&many(64)), (64, 0));
        assert_eq!(plan(&many(66)), (64, 2));
        assert!(enrich_may_pass_through(&many(65), &attrs));
        assert!(!enrich_may_pass_through(&many(64), &attrs));
    }

    #[test]
    fn sample_counts_over_requests() {
        let rule = RuleSpec::sample("s", 3).severity("INFO", 9..=12);
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
