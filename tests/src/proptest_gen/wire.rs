//! A hand-written protobuf encoder over a small field tree.
//!
//! The generator builds requests as trees of [`Field`]s so it can write what real encoders write
//! and prost never does: fields in any order, repeated singular fields, unknown fields of every
//! wire type, padded (non-minimal) tags and length prefixes, and, for the malformed cases, bad
//! lengths, group wire types and the like.
//!
//! The same tree, re-emitted with [`Edits`], gives the exact bytes dt must send on: removed
//! fields gone, bytes inserted at the end of a message (`[enrich]`'s resource), every
//! enclosing length prefix rewritten in the number of bytes it had, masked strings replaced by
//! `*`.

use std::collections::{BTreeMap, BTreeSet};

/// Wire types.
pub const WT_VARINT: u8 = 0;
pub const WT_I64: u8 = 1;
pub const WT_LEN: u8 = 2;
pub const WT_SGROUP: u8 = 3;
pub const WT_EGROUP: u8 = 4;
pub const WT_I32: u8 = 5;

/// Which message a [`Val::Msg`] is (for marking records and attributes, and for choosing where
/// a malformation goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
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

/// Identifies a part of a valid request that an edit can touch, in the order prost decodes it:
/// records are numbered over the whole request, attributes and body strings within their record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    /// The `resource_logs` field `i` of the request.
    ResourceLogs(u32),
    /// The `log_records` field holding record `r`.
    Record(u32),
    /// The `attributes` field `a` of record `r`.
    Attr(u32, u32),
    /// The `string_value` field `k` (counted over all `body` fields) of record `r`'s body.
    BodyString(u32, u32),
    /// The `body` field `j` of record `r`, when it is not exactly one `string_value`: masked,
    /// its value is replaced whole by a string of `*` of the same size ([`whole_body`]).
    BodyValue(u32, u32),
}

/// What `mask_body` writes over a body value of `n` bytes that is not exactly one
/// `string_value` (README, "Redact"): a `string_value` tag, the fewest length-prefix bytes that
/// leave room for the rest (padded when the length is shorter), and `*` for the rest.
pub fn whole_body(n: usize) -> Vec<u8> {
    let stars = whole_body_stars(n);
    let mut out = vec![0x0a];
    put_varint_n(&mut out, stars as u64, n - 1 - stars);
    out.resize(n, b'*');
    out
}

/// How many `*` [`whole_body`] writes over a value of `n` bytes.
pub fn whole_body_stars(n: usize) -> usize {
    assert!(n >= 2, "an empty value is not masked");
    let prefix = if n - 2 < 0x80 {
        1
    } else if n - 3 < 0x4000 {
        2
    } else {
        3
    };
    n - 1 - prefix
}

/// Whether an AnyValue's fields are exactly one `string_value`, as dt reads a string body
/// (its tag one byte, its length prefix any width): masked in place; any other value is
/// replaced whole.
pub fn is_single_string(any: &[Field]) -> bool {
    matches!(
        any,
        [Field {
            num: 1,
            wt_override: None,
            tag_pad: 0,
            val: Val::Bytes { .. },
            ..
        }]
    )
}

#[derive(Clone, Debug)]
pub struct Field {
    /// Field number (0 only in malformed requests).
    pub num: u64,
    /// Wire type written in the tag instead of the value's own (malformed requests).
    pub wt_override: Option<u8>,
    /// Extra bytes of the tag varint (padded, non-minimal encoding).
    pub tag_pad: u8,
    pub val: Val,
    pub mark: Option<Mark>,
}

#[derive(Clone, Debug)]
pub enum Val {
    /// A varint, `pad` bytes longer than needed (at most 10 bytes in all).
    Varint {
        v: u64,
        pad: u8,
    },
    I64(u64),
    I32(u32),
    /// A length-delimited payload, its length prefix `pad` bytes longer than needed.
    Bytes {
        data: Vec<u8>,
        pad: u8,
    },
    /// A length-delimited message. `bad_len = Some(x)`: the prefix claims `x + 1` bytes more
    /// than are left in the parent (malformed requests).
    Msg {
        kind: Kind,
        fields: Vec<Field>,
        pad: u8,
        bad_len: Option<u32>,
    },
    /// Raw bytes after the tag, as they are (malformed requests).
    Raw(Vec<u8>),
    /// Nothing after the tag (group start and end tags).
    Nothing,
}

impl Field {
    pub fn new(num: u64, val: Val) -> Field {
        Field {
            num,
            wt_override: None,
            tag_pad: 0,
            val,
            mark: None,
        }
    }

    pub fn varint(num: u64, v: u64) -> Field {
        Field::new(num, Val::Varint { v, pad: 0 })
    }

    pub fn bytes(num: u64, data: impl Into<Vec<u8>>) -> Field {
        Field::new(
            num,
            Val::Bytes {
                data: data.into(),
                pad: 0,
            },
        )
    }

    pub fn msg(num: u64, kind: Kind, fields: Vec<Field>) -> Field {
        Field::new(
            num,
            Val::Msg {
                kind,
                fields,
                pad: 0,
                bad_len: None,
            },
        )
    }

    /// The wire type the tag carries.
    pub fn wire_type(&self) -> u8 {
        if let Some(wt) = self.wt_override {
            return wt;
        }
        match &self.val {
            Val::Varint { .. } => WT_VARINT,
            Val::I64(_) => WT_I64,
            Val::I32(_) => WT_I32,
            Val::Bytes { .. } | Val::Msg { .. } => WT_LEN,
            Val::Raw(_) | Val::Nothing => panic!("field {} needs a wire type", self.num),
        }
    }

    /// The fields of a message value.
    pub fn fields(&self) -> Option<&Vec<Field>> {
        match &self.val {
            Val::Msg { fields, .. } => Some(fields),
            _ => None,
        }
    }

    pub fn fields_mut(&mut self) -> Option<&mut Vec<Field>> {
        match &mut self.val {
            Val::Msg { fields, .. } => Some(fields),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        match &self.val {
            Val::Msg { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Length of the minimal varint of `v`.
pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Writes `v` as a varint of exactly `n` bytes (padded with continuation bytes).
pub fn put_varint_n(out: &mut Vec<u8>, v: u64, n: usize) {
    assert!(
        (1..=10).contains(&n) && (n == 10 || v >> (7 * n) == 0),
        "{v} does not fit a {n}-byte varint"
    );
    for i in 0..n {
        let mut b = ((v >> (7 * i)) & 0x7f) as u8;
        if i + 1 < n {
            b |= 0x80;
        }
        out.push(b);
    }
}

/// Writes `v` as a varint `pad` bytes longer than minimal (capped at 10 bytes).
pub fn put_varint(out: &mut Vec<u8>, v: u64, pad: u8) {
    let n = (varint_len(v) + pad as usize).min(10);
    put_varint_n(out, v, n);
}

/// What to change when emitting a tree.
#[derive(Clone, Debug, Default)]
pub struct Edits {
    /// Fields left out.
    pub remove: BTreeSet<Mark>,
    /// Byte strings replaced by as many `*`.
    pub mask: BTreeSet<Mark>,
    /// Byte strings that may arrive either as they were or as `*`s (overridden body strings of
    /// a masked record: invisible to decoders, so dt may mask them or not).
    pub either: BTreeSet<Mark>,
    /// Bytes inserted at the end of a message's contents (its length prefix counts them).
    pub append: BTreeMap<Mark, Vec<u8>>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.mask.is_empty()
            && self.either.is_empty()
            && self.append.is_empty()
    }

    /// Bytes inserted in all.
    pub fn inserted(&self) -> usize {
        self.append.values().map(Vec::len).sum()
    }
}

/// Bytes of the output that may be either `original` or all `*` (see [`Edits::either`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Either {
    pub off: usize,
    pub original: Vec<u8>,
}

/// The encoding of a message's fields, unedited.
pub fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut either = Vec::new();
    emit_fields(fields, &Edits::default(), &mut out, &mut either);
    out
}

/// The encoding of one field (tag included), unedited.
pub fn encode_field(f: &Field) -> Vec<u8> {
    encode(std::slice::from_ref(f))
}

/// The encoding of `fields` with `edits` applied, and where the "either" strings landed.
pub fn emit(fields: &[Field], edits: &Edits) -> (Vec<u8>, Vec<Either>) {
    let mut out = Vec::new();
    let mut either = Vec::new();
    emit_fields(fields, edits, &mut out, &mut either);
    (out, either)
}

fn emit_fields(fields: &[Field], edits: &Edits, out: &mut Vec<u8>, either: &mut Vec<Either>) {
    let bad = fields.iter().any(|f| {
        matches!(
            f.val,
            Val::Msg {
                bad_len: Some(_),
                ..
            }
        )
    });
    if !bad {
        for f in fields {
            if !f.mark.is_some_and(|m| edits.remove.contains(&m)) {
                emit_field(f, edits, out, either, None);
            }
        }
        return;
    }
    // Encode each field on its own first: a bad length needs the sizes of the fields after it.
    let mut encs: Vec<(Vec<u8>, Vec<Either>)> = Vec::with_capacity(fields.len());
    for f in fields {
        if f.mark.is_some_and(|m| edits.remove.contains(&m)) {
            encs.push((Vec::new(), Vec::new()));
            continue;
        }
        let mut o = Vec::new();
        let mut e = Vec::new();
        emit_field(f, edits, &mut o, &mut e, None);
        encs.push((o, e));
    }
    for (i, f) in fields.iter().enumerate() {
        if let Val::Msg {
            bad_len: Some(extra),
            ..
        } = &f.val
        {
            // Re-encode with a prefix that runs past the end of the parent.
            let content = content_of(f, edits);
            let later: usize = encs[i + 1..].iter().map(|(o, _)| o.len()).sum();
            let declared = (content.len() + later) as u64 + 1 + *extra as u64;
            let mut o = Vec::new();
            emit_field(f, edits, &mut o, &mut Vec::new(), Some(declared));
            encs[i] = (o, Vec::new());
        }
    }
    for (o, e) in encs {
        let base = out.len();
        out.extend_from_slice(&o);
        either.extend(e.into_iter().map(|x| Either {
            off: x.off + base,
            original: x.original,
        }));
    }
}

fn content_of(f: &Field, edits: &Edits) -> Vec<u8> {
    match &f.val {
        Val::Msg { fields, .. } => {
            let mut o = Vec::new();
            emit_fields(fields, edits, &mut o, &mut Vec::new());
            o
        }
        _ => Vec::new(),
    }
}

fn emit_field(
    f: &Field,
    edits: &Edits,
    out: &mut Vec<u8>,
    either: &mut Vec<Either>,
    declared: Option<u64>,
) {
    put_varint(out, (f.num << 3) | f.wire_type() as u64, f.tag_pad);
    match &f.val {
        Val::Varint { v, pad } => put_varint(out, *v, *pad),
        Val::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Val::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Val::Bytes { data, pad } => {
            put_varint(out, data.len() as u64, *pad);
            match f.mark {
                Some(m) if edits.mask.contains(&m) => out.extend(data.iter().map(|_| b'*')),
                Some(m) if edits.either.contains(&m) => {
                    either.push(Either {
                        off: out.len(),
                        original: data.clone(),
                    });
                    out.extend_from_slice(data);
                }
                _ => out.extend_from_slice(data),
            }
        }
        Val::Msg { fields, pad, .. } if f.mark.is_some_and(|m| edits.mask.contains(&m)) => {
            // A body replaced whole: the same length, a string of `*` in it.
            let len = fields_len(fields);
            put_varint(out, len as u64, *pad);
            out.extend(whole_body(len));
        }
        Val::Msg {
            fields,
            pad,
            bad_len,
            ..
        } if declared.is_none() && bad_len.is_none() && edits.is_empty() => {
            // Unedited: the length is known up front, the content goes straight out.
            let len = fields_len(fields);
            put_varint(out, len as u64, *pad);
            let start = out.len();
            emit_fields(fields, edits, out, either);
            debug_assert_eq!(out.len() - start, len);
        }
        Val::Msg { fields, pad, .. } => {
            // The prefix keeps the byte count it had unedited; the value is the edited length
            // (with what is inserted at the end).
            let mut content = Vec::new();
            let mut inner = Vec::new();
            emit_fields(fields, edits, &mut content, &mut inner);
            if let Some(extra) = f.mark.and_then(|m| edits.append.get(&m)) {
                content.extend_from_slice(extra);
            }
            let orig_len = if edits.is_empty() {
                content.len()
            } else {
                fields_len(fields)
            };
            let n = (varint_len(orig_len as u64) + *pad as usize).min(10);
            match declared {
                Some(d) => put_varint(out, d, 0),
                None => put_varint_n(out, content.len() as u64, n),
            }
            let base = out.len();
            out.extend_from_slice(&content);
            either.extend(inner.into_iter().map(|x| Either {
                off: x.off + base,
                original: x.original,
            }));
        }
        Val::Raw(b) => out.extend_from_slice(b),
        Val::Nothing => {}
    }
}

/// Length of the unedited encoding of `fields`.
pub fn fields_len(fields: &[Field]) -> usize {
    // Back to front: a bad length prefix depends on the size of the fields after it.
    let mut later = 0;
    for f in fields.iter().rev() {
        later += field_len_before(f, later);
    }
    later
}

/// Length of the unedited encoding of `f`, tag included, as a field followed by nothing else.
pub fn field_len(f: &Field) -> usize {
    field_len_before(f, 0)
}

/// Length of the unedited encoding of `f`, followed by `later` bytes in its message.
fn field_len_before(f: &Field, later: usize) -> usize {
    let padded = |v: u64, pad: u8| (varint_len(v) + pad as usize).min(10);
    let tag = padded((f.num << 3) | f.wire_type() as u64, f.tag_pad);
    tag + match &f.val {
        Val::Varint { v, pad } => padded(*v, *pad),
        Val::I64(_) => 8,
        Val::I32(_) => 4,
        Val::Bytes { data, pad } => padded(data.len() as u64, *pad) + data.len(),
        Val::Msg {
            fields,
            pad,
            bad_len,
            ..
        } => {
            let c = fields_len(fields);
            match bad_len {
                Some(extra) => varint_len((c + later) as u64 + 1 + *extra as u64) + c,
                None => padded(c as u64, *pad) + c,
            }
        }
        Val::Raw(b) => b.len(),
        Val::Nothing => 0,
    }
}

/// Sets the [`Mark`]s of a valid request's tree, following the schema the way prost decodes
/// it: ResourceLogs in order, records in order over ResourceLogs and ScopeLogs, attributes and
/// body strings in order within their record. Returns, per record, its field's encoded size and
/// the encoded sizes of its attribute fields.
pub fn mark_request(req: &mut [Field]) -> Vec<RecordSizes> {
    let mut out = Vec::new();
    for (i, rl) in req.iter_mut().filter(|f| f.num == 1).enumerate() {
        rl.mark = Some(Mark::ResourceLogs(i as u32));
        let Some(rl_fields) = rl.fields_mut() else {
            continue;
        };
        for sl in rl_fields.iter_mut().filter(|f| f.num == 2) {
            let Some(sl_fields) = sl.fields_mut() else {
                continue;
            };
            for rec in sl_fields.iter_mut().filter(|f| f.num == 2) {
                let r = out.len() as u32;
                rec.mark = Some(Mark::Record(r));
                let mut attrs = Vec::new();
                let mut body_strings = 0u32;
                let mut body_string_lens = Vec::new();
                let mut body_fields = Vec::new();
                if let Some(fields) = rec.fields_mut() {
                    for f in fields.iter_mut() {
                        match f.num {
                            6 => {
                                f.mark = Some(Mark::Attr(r, attrs.len() as u32));
                                attrs.push(field_len(f) as u64);
                            }
                            5 => {
                                let first_string = body_strings;
                                let (single, content_len) = match f.fields() {
                                    Some(any) => (is_single_string(any), fields_len(any) as u64),
                                    None => (false, 0),
                                };
                                f.mark = Some(Mark::BodyValue(r, body_fields.len() as u32));
                                body_fields.push(BodyField {
                                    single: single.then_some(first_string),
                                    content_len,
                                });
                                if let Some(any) = f.fields_mut() {
                                    for s in any.iter_mut().filter(|s| s.num == 1) {
                                        s.mark = Some(Mark::BodyString(r, body_strings));
                                        body_strings += 1;
                                        body_string_lens.push(match &s.val {
                                            Val::Bytes { data, .. } => data.len() as u64,
                                            _ => 0,
                                        });
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                out.push(RecordSizes {
                    field_len: field_len(rec) as u64,
                    attr_field_lens: attrs,
                    body_strings,
                    body_string_lens,
                    body_fields,
                });
            }
        }
    }
    out
}

/// Encoded sizes of one record (see [`mark_request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSizes {
    /// The whole `log_records` field: tag, length prefix, message.
    pub field_len: u64,
    /// Each `attributes` field, in order: tag, length prefix, KeyValue.
    pub attr_field_lens: Vec<u64>,
    /// How many `string_value` fields the record's `body` fields hold.
    pub body_strings: u32,
    /// The length of each of those strings: masking an empty one changes nothing, and dt
    /// plans nothing for it.
    pub body_string_lens: Vec<u64>,
    /// Each `body` field, in order.
    pub body_fields: Vec<BodyField>,
}

/// One `body` field of a record (see [`RecordSizes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyField {
    /// When it is exactly one `string_value`: that string's number among the record's body
    /// strings (masked in place). `None`: the value is replaced whole when masked.
    pub single: Option<u32>,
    /// Bytes of its AnyValue (0: no value).
    pub content_len: u64,
}

/// How deep messages nest in `fields` (a request's top-level fields: the request is depth 0),
/// counting every message of the tree: an upper bound of the depth dt's walk reaches.
pub fn tree_depth(fields: &[Field]) -> u32 {
    fields
        .iter()
        .filter_map(Field::fields)
        .map(|f| 1 + tree_depth(f))
        .max()
        .unwrap_or(0)
}

/// Whether field `num` of `kind` is a `string` of the schema.
fn is_string(kind: Kind, num: u64) -> bool {
    matches!(
        (kind, num),
        (Kind::ResourceLogs | Kind::ScopeLogs, 3)
            | (Kind::Scope, 1 | 2)
            | (Kind::LogRecord, 3 | 12)
            | (Kind::KeyValue, 1)
            | (Kind::AnyValue, 1)
            | (Kind::EntityRef, 1..=4)
    )
}

/// Replaces, in every `string` field of the schema, each invalid UTF-8 sequence with as many
/// `?` (same lengths, so the same encoding sizes). Returns whether anything was replaced. The
/// reference decodes the sanitized tree with the `string`-typed OTLP messages; the strings it
/// changes are strings no rule value or needle contains a `?` of.
pub fn sanitize_utf8(fields: &mut [Field], kind: Kind) -> bool {
    let mut changed = false;
    for f in fields.iter_mut() {
        match &mut f.val {
            Val::Bytes { data, .. }
                if is_string(kind, f.num)
                    && f.wt_override.is_none()
                    && std::str::from_utf8(data).is_err() =>
            {
                let mut out = Vec::with_capacity(data.len());
                for chunk in data.utf8_chunks() {
                    out.extend_from_slice(chunk.valid().as_bytes());
                    out.extend(chunk.invalid().iter().map(|_| b'?'));
                }
                *data = out;
                changed = true;
            }
            Val::Msg {
                kind: k, fields, ..
            } => changed |= sanitize_utf8(fields, *k),
            _ => {}
        }
    }
    changed
}

/// Compares `got` with `want`, where the [`Either`] ranges of `want` may also be all `*`.
/// Returns the first differing offset.
pub fn first_difference(want: &[u8], either: &[Either], got: &[u8]) -> Option<usize> {
    let mut ranges: BTreeMap<usize, &Either> = BTreeMap::new();
    for e in either.iter().filter(|e| !e.original.is_empty()) {
        ranges.insert(e.off, e);
    }
    let mut i = 0;
    while i < want.len().min(got.len()) {
        if let Some(e) = ranges.get(&i) {
            let end = i + e.original.len();
            if end > got.len() {
                return Some(i);
            }
            let g = &got[i..end];
            if g != &e.original[..] && !g.iter().all(|b| *b == b'*') {
                return Some(
                    i + g
                        .iter()
                        .zip(&e.original)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0),
                );
            }
            i = end;
            continue;
        }
        if want[i] != got[i] {
            return Some(i);
        }
        i += 1;
    }
    if want.len() != got.len() {
        return Some(want.len().min(got.len()));
    }
    None
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s += &format!("{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_prefixes_keep_their_size_when_edited() {
        let mut rec = Field::msg(2, Kind::LogRecord, vec![Field::varint(2, 9)]);
        rec.mark = Some(Mark::Record(0));
        let mut keep = Field::msg(2, Kind::LogRecord, vec![Field::varint(2, 5)]);
        keep.mark = Some(Mark::Record(1));
        let mut sl = Field::msg(2, Kind::ScopeLogs, vec![rec, keep]);
        if let Val::Msg { pad, .. } = &mut sl.val {
            *pad = 2;
        }
        let fields = vec![sl];
        let full = encode(&fields);
        // tag, 3-byte prefix of 8, two 4-byte records
        assert_eq!(
            full,
            vec![0x12, 0x88, 0x80, 0x00, 0x12, 2, 0x10, 9, 0x12, 2, 0x10, 5]
        );
        let mut e = Edits::default();
        e.remove.insert(Mark::Record(0));
        let (out, _) = emit(&fields, &e);
        assert_eq!(out, vec![0x12, 0x84, 0x80, 0x00, 0x12, 2, 0x10, 5]);
    }

    /// Bytes appended to a message: its prefix keeps its width (padded or not) and counts them
    /// with the removals inside it.
    #[test]
    fn appended_bytes_keep_the_prefix_width() {
        let mut rec = Field::msg(2, Kind::LogRecord, vec![Field::varint(2, 9)]);
        rec.mark = Some(Mark::Record(0));
        let sl = Field::msg(2, Kind::ScopeLogs, vec![rec]);
        let mut rl = Field::msg(1, Kind::ResourceLogs, vec![sl]);
        rl.mark = Some(Mark::ResourceLogs(0));
        if let Val::Msg { pad, .. } = &mut rl.val {
            *pad = 1;
        }
        let fields = vec![rl];
        assert_eq!(
            encode(&fields),
            vec![0x0a, 0x86, 0x00, 0x12, 4, 0x12, 2, 0x10, 9]
        );
        let mut e = Edits::default();
        e.remove.insert(Mark::Record(0));
        e.append.insert(Mark::ResourceLogs(0), vec![0x0a, 1, 0xaa]);
        let (out, _) = emit(&fields, &e);
        // 6 - 4 + 3 = 5, in two bytes.
        assert_eq!(out, vec![0x0a, 0x85, 0x00, 0x12, 0, 0x0a, 1, 0xaa]);
        assert_eq!(e.inserted(), 3);
    }

    #[test]
    fn bad_len_runs_past_the_parent() {
        let mut inner = Field::msg(6, Kind::KeyValue, vec![Field::bytes(1, "k")]);
        if let Val::Msg { bad_len, .. } = &mut inner.val {
            *bad_len = Some(0);
        }
        let rec = Field::msg(2, Kind::LogRecord, vec![inner, Field::varint(2, 9)]);
        let out = encode(std::slice::from_ref(&rec));
        // record: tag, len 7; kv: tag, claims 3 + 2 + 1 = 6 (5 are left), key "k"; severity.
        assert_eq!(out, vec![0x12, 7, 0x32, 6, 0x0a, 1, b'k', 0x10, 9]);
        assert_eq!(fields_len(&[rec]), out.len());
    }

    #[test]
    fn either_ranges() {
        let want = b"ab12cd".to_vec();
        let either = vec![Either {
            off: 2,
            original: b"12".to_vec(),
        }];
        assert_eq!(first_difference(&want, &either, b"ab12cd"), None);
        assert_eq!(first_difference(&want, &either, b"ab**cd"), None);
        assert_eq!(first_difference(&want, &either, b"ab*2cd"), Some(2));
        assert_eq!(first_difference(&want, &either, b"ab12ce"), Some(5));
        assert_eq!(first_difference(&want, &either, b"ab12c"), Some(5));
        let empty = vec![Either {
            off: 2,
            original: Vec::new(),
        }];
        assert_eq!(first_difference(&want, &empty, b"ab12cd"), None);
        assert_eq!(first_difference(&want, &empty, b"ab**cd"), Some(2));
    }
}
