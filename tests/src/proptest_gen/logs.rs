//! Random ExportLogsServiceRequests as field trees, their malformed variants, HTTP heads and
//! write splits.

use super::wire::{Field, Kind, Val, WT_EGROUP, WT_I32, WT_I64, WT_LEN, WT_SGROUP, WT_VARINT};
use super::{ATTR_KEYS, ATTR_VALUES, ATTRS, BODY_WORDS, G, NEEDLES, SERVICES};

/// Field numbers each message of the schema (opentelemetry-proto 0.33, as prost decodes it)
/// defines. Unknown fields are drawn outside these.
pub fn known_fields(kind: Kind) -> &'static [u64] {
    match kind {
        Kind::Request => &[1],
        Kind::ResourceLogs => &[1, 2, 3],
        Kind::Resource => &[1, 2, 3],
        Kind::ScopeLogs => &[1, 2, 3],
        Kind::Scope => &[1, 2, 3, 4],
        // 4 is reserved in the .proto: unknown to decoders.
        Kind::LogRecord => &[1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12],
        Kind::KeyValue => &[1, 2, 3],
        Kind::AnyValue => &[1, 2, 3, 4, 5, 6, 7, 8],
        Kind::ArrayValue | Kind::KeyValueList => &[1],
        Kind::EntityRef => &[1, 2, 3, 4],
    }
}

/// A field number `kind` does not define: small ones next to the schema's, and large ones up to
/// the largest valid field number (a 5-byte tag).
pub fn unknown_number(g: &mut G, kind: Kind) -> u64 {
    let known = known_fields(kind);
    loop {
        let n = match g.weighted(&[70, 10, 10, 10]) {
            0 => g.range(1, 20) as u64,
            1 => g.range(100, 2000) as u64,
            2 => g.range(16, 2047) as u64,
            _ => *g.pick(&[536_870_911u64, 268_435_456, 19_000, 65_535]),
        };
        if !known.contains(&n) {
            return n;
        }
    }
}

/// A varint value with a spread of encoded lengths (1 to 10 bytes).
pub fn any_varint(g: &mut G) -> u64 {
    let bits = g.range(0, 64);
    if bits == 64 {
        g.u64()
    } else {
        g.u64() & ((1u64 << bits) - 1)
    }
}

/// One unknown field of a random wire type.
pub fn unknown_field(g: &mut G, kind: Kind) -> Field {
    let num = unknown_number(g, kind);
    let val = match g.range(0, 3) {
        0 => Val::Varint {
            v: any_varint(g),
            pad: 0,
        },
        1 => Val::I64(g.u64()),
        2 => {
            let n = *g.pick(&[0usize, 1, 3, 8, 20, 130]);
            let data = if g.chance(0.3) {
                // Bytes that look like a message dt knows (a KeyValue), under a field it must skip.
                let kv = kv_fields(g, Some("service.name"), Some(string_any("checkout")));
                super::wire::encode(&kv)
            } else {
                g.bytes(n)
            };
            Val::Bytes { data, pad: 0 }
        }
        _ => Val::I32(g.u32()),
    };
    Field::new(num, val)
}

/// Adds `n` unknown fields at random positions.
fn add_unknown(g: &mut G, fields: &mut Vec<Field>, kind: Kind, p: f64, max: usize) {
    if !g.chance(p) {
        return;
    }
    for _ in 0..g.range(1, max) {
        let at = g.range(0, fields.len());
        let f = unknown_field(g, kind);
        fields.insert(at, f);
    }
}

/// Shuffles the fields (`p`), otherwise sorts them by field number (a canonical encoder's
/// order; stable, so repeated fields keep their order).
fn order(g: &mut G, fields: &mut [Field], p: f64) {
    if g.chance(p) {
        g.shuffle(fields);
    } else {
        fields.sort_by_key(|f| f.num);
    }
}

/// A string from the pool, sometimes a random one, sometimes long.
fn some_string(g: &mut G, pool: &[&str]) -> String {
    match g.weighted(&[85, 10, 5]) {
        0 => g.pick(pool).to_string(),
        1 => body_text(g),
        _ => "z".repeat(g.range(60, 200)),
    }
}

/// A string body: words and needles, sometimes long (crossing the kernel's 64-byte scan chunks
/// and pull windows).
pub fn body_text(g: &mut G) -> String {
    let mut s = String::new();
    let words = match g.weighted(&[80, 15, 5]) {
        0 => g.range(0, 6),
        1 => g.range(10, 60),
        _ => g.range(200, 700),
    };
    for _ in 0..words {
        if g.chance(0.25) {
            s += *g.pick(NEEDLES);
        } else {
            s += *g.pick(BODY_WORDS);
        }
    }
    s
}

pub fn string_any(s: &str) -> Vec<Field> {
    vec![Field::bytes(1, s.as_bytes())]
}

/// The fields of an AnyValue: usually one oneof member (string with probability `p_string`),
/// sometimes none or two (the last one wins), sometimes an unknown field.
pub fn any_value(g: &mut G, p_string: f64, depth: u32, strings: &[&str]) -> Vec<Field> {
    let members = match g.weighted(&[85, 8, 7]) {
        0 => 1,
        1 => 2,
        _ => 0,
    };
    let mut fields = Vec::new();
    for _ in 0..members {
        let f = if g.chance(p_string) {
            Field::bytes(1, some_string(g, strings).into_bytes())
        } else {
            match g.range(0, if depth < 2 { 5 } else { 3 }) {
                0 => Field::varint(2, *g.pick(&[0u64, 1, 1, 2, u64::MAX])),
                1 => Field::varint(3, any_varint(g)),
                2 => {
                    let d = *g.pick(&[0.0f64, -0.0, 1.5, -3.25e10, f64::MAX, f64::MIN_POSITIVE]);
                    Field::new(4, Val::I64(d.to_bits()))
                }
                3 => {
                    let vals = (0..g.range(0, 3))
                        .map(|_| {
                            let f = any_value(g, 0.6, depth + 1, strings);
                            Field::msg(1, Kind::AnyValue, f)
                        })
                        .collect();
                    let mut vals = vals;
                    add_unknown(g, &mut vals, Kind::ArrayValue, 0.05, 1);
                    Field::msg(5, Kind::ArrayValue, vals)
                }
                4 => {
                    let vals = (0..g.range(0, 3))
                        .map(|_| {
                            let k = g.pick(ATTR_KEYS).to_string();
                            let v = any_value(g, 0.6, depth + 1, strings);
                            Field::msg(1, Kind::KeyValue, kv_fields(g, Some(&k), Some(v)))
                        })
                        .collect();
                    let mut vals = vals;
                    add_unknown(g, &mut vals, Kind::KeyValueList, 0.05, 1);
                    Field::msg(6, Kind::KeyValueList, vals)
                }
                _ => {
                    let n = g.range(0, 12);
                    Field::bytes(7, g.bytes(n))
                }
            }
        };
        fields.push(f);
    }
    if members == 2 && g.chance(0.5) {
        fields.swap(0, 1);
    }
    add_unknown(g, &mut fields, Kind::AnyValue, 0.05, 2);
    fields
}

/// The fields of a KeyValue: the key (sometimes twice, or missing), the value (sometimes twice:
/// merged), sometimes `key_strindex` or an unknown field, in any order.
pub fn kv_fields(g: &mut G, key: Option<&str>, value: Option<Vec<Field>>) -> Vec<Field> {
    let mut fields = Vec::new();
    if let Some(k) = key {
        fields.push(Field::bytes(1, k.as_bytes()));
    }
    if g.chance(0.05) {
        // A second key: whichever comes last wins.
        fields.push(Field::bytes(1, g.pick(ATTR_KEYS).as_bytes()));
    }
    if let Some(v) = value {
        fields.push(Field::msg(2, Kind::AnyValue, v));
    }
    if g.chance(0.04) {
        let v = any_value(g, 0.7, 1, ATTR_VALUES);
        fields.push(Field::msg(2, Kind::AnyValue, v));
    }
    if g.chance(0.03) {
        fields.push(Field::varint(3, g.range(0, 5) as u64));
    }
    add_unknown(g, &mut fields, Kind::KeyValue, 0.05, 2);
    order(g, &mut fields, 0.3);
    fields
}

/// A record attribute: a key from the pool, usually one of its string values.
fn record_attribute(g: &mut G) -> Field {
    let (k, values) = *g.pick(ATTRS);
    let key = if g.chance(0.95) {
        Some(k.to_string())
    } else if g.chance(0.5) {
        None
    } else {
        Some("k".repeat(g.range(60, 70)))
    };
    let value = if g.chance(0.96) {
        Some(if g.chance(0.7) {
            string_any(values[g.range(0, values.len() - 1)])
        } else {
            any_value(g, 0.7, 0, ATTR_VALUES)
        })
    } else {
        None
    };
    Field::msg(6, Kind::KeyValue, kv_fields(g, key.as_deref(), value))
}

/// SeverityNumber varints: mostly 1..=24, sometimes 0, sometimes what only a careless or hostile
/// encoder writes (negative: 10 bytes; out of range; over 32 bits, which decoders truncate).
pub fn severity_value(g: &mut G) -> u64 {
    match g.weighted(&[75, 8, 17]) {
        0 => g.range(1, 24) as u64,
        1 => 0,
        _ => *g.pick(&[
            -1i64 as u64,
            -5i64 as u64,
            i32::MIN as i64 as u64,
            i32::MAX as u64,
            25,
            100,
            255,
            256,
            1 << 32,
            (1 << 32) + 9,
            (1 << 35) + 17,
            u64::MAX,
            0x7fff_ffff_ffff_ffff,
            -4294967287i64 as u64, // low 32 bits: 9
        ]),
    }
}

/// String occurrences in one record's body fields, at most (README, "Limits": 4 string body
/// occurrences in one record).
pub const MAX_BODY_STRINGS: usize = 4;

/// Size of the request to generate.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub resource_logs: (usize, usize),
    pub scope_logs: (usize, usize),
    pub records: (usize, usize),
}

impl Shape {
    pub fn random(g: &mut G) -> Shape {
        match g.weighted(&[70, 25, 5]) {
            0 => Shape {
                resource_logs: (0, 3),
                scope_logs: (0, 3),
                records: (0, 5),
            },
            1 => Shape {
                resource_logs: (1, 4),
                scope_logs: (1, 4),
                records: (0, 15),
            },
            _ => Shape {
                resource_logs: (1, 2),
                scope_logs: (1, 2),
                records: (30, 70),
            },
        }
    }
}

/// One LogRecord field (`log_records`, number 2 of ScopeLogs).
pub fn record(g: &mut G) -> Field {
    let mut f = Vec::new();
    if g.chance(0.8) {
        f.push(Field::new(
            1,
            Val::I64(1_704_067_200_000_000_000 + g.range(0, 1 << 20) as u64),
        ));
    }
    if g.chance(0.6) {
        f.push(Field::new(11, Val::I64(g.u64())));
    }
    if g.chance(0.92) {
        let n = match g.weighted(&[85, 12, 3]) {
            0 => 1,
            1 => 2,
            _ => 3,
        };
        for _ in 0..n {
            f.push(Field::varint(2, severity_value(g)));
        }
    }
    if g.chance(0.5) {
        f.push(Field::bytes(
            3,
            *g.pick(&["INFO", "DEBUG", "WARN", "", "Error"]),
        ));
    }
    let bodies = match g.weighted(&[8, 84, 6, 2]) {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 3,
    };
    for _ in 0..bodies {
        let body = if g.chance(0.8) {
            vec![Field::bytes(1, body_text(g).into_bytes())]
        } else {
            any_value(g, 0.3, 0, BODY_WORDS)
        };
        f.push(Field::msg(5, Kind::AnyValue, body));
    }
    let attrs = if g.chance(0.05) {
        g.range(7, 12)
    } else {
        g.range(0, 4)
    };
    for _ in 0..attrs {
        f.push(record_attribute(g));
    }
    if g.chance(0.1) {
        f.push(Field::varint(7, g.range(0, 1000) as u64));
    }
    if g.chance(0.2) {
        f.push(Field::new(8, Val::I32(g.u32() & 0x1ff)));
    }
    if g.chance(0.3) {
        f.push(Field::bytes(9, g.bytes(16)));
    }
    if g.chance(0.3) {
        f.push(Field::bytes(10, g.bytes(8)));
    }
    if g.chance(0.1) {
        f.push(Field::bytes(12, *g.pick(&["", "login", "日本"])));
    }
    add_unknown(g, &mut f, Kind::LogRecord, 0.15, 3);
    order(g, &mut f, 0.6);
    if g.chance(0.05) {
        // A string body ending in the start of a needle, with the next field's tag byte (and
        // what follows it) completing the needle: the body ends where its length says.
        // 0x65 'e' is field 12 fixed32, 0x61 'a' field 12 fixed64, 0x62 'b' field 12 bytes,
        // unknown in an AnyValue; in a LogRecord field 12 is event_name (bytes).
        let text = body_text(g);
        let (any, after) = match g.range(0, 3) {
            0 => (
                vec![
                    Field::bytes(1, format!("{text}secr")),
                    Field::new(12, Val::I32(u32::from_le_bytes(*b"tttt"))),
                ],
                None,
            ),
            1 => (
                vec![
                    Field::bytes(1, format!("{text}a")),
                    Field::new(12, Val::I64(u64::from_le_bytes(*b"aaaaaaaa"))),
                ],
                None,
            ),
            2 => (
                vec![Field::bytes(1, format!("{text}a")), Field::bytes(12, "xyz")],
                None,
            ),
            _ => (
                vec![Field::bytes(1, format!("{text}a"))],
                Some(Field::bytes(12, "zz")),
            ),
        };
        let at = g.range(0, f.len());
        if let Some(a) = after {
            f.insert(at, a);
        }
        f.insert(at, Field::msg(5, Kind::AnyValue, any));
    }
    // At most MAX_BODY_STRINGS string_value fields over all body fields (dt's documented limit
    // on string body occurrences that mask_body masks): drop bodies from the end.
    let strings = |f: &[Field]| {
        f.iter()
            .filter(|x| x.num == 5)
            .filter_map(Field::fields)
            .map(|any| any.iter().filter(|m| m.num == 1).count())
            .sum::<usize>()
    };
    while strings(&f) > MAX_BODY_STRINGS {
        let last = f.iter().rposition(|x| x.num == 5).expect("a body");
        f.remove(last);
    }
    Field::msg(2, Kind::LogRecord, f)
}

/// A resource: `service.name` (usually once, a string; sometimes missing, twice, not a string,
/// or without a value), other attributes, sometimes entity refs and unknown fields.
fn resource(g: &mut G) -> Field {
    let mut f = Vec::new();
    let names = match g.weighted(&[15, 75, 10]) {
        0 => 0,
        1 => 1,
        _ => 2,
    };
    for _ in 0..names {
        let value = match g.weighted(&[85, 10, 5]) {
            0 => Some(vec![Field::bytes(1, g.pick(SERVICES).as_bytes())]),
            1 => Some(any_value(g, 0.0, 1, SERVICES)),
            _ => None,
        };
        f.push(Field::msg(
            1,
            Kind::KeyValue,
            kv_fields(g, Some("service.name"), value),
        ));
    }
    for _ in 0..g.range(0, 3) {
        let k = *g.pick(&[
            "host.name",
            "telemetry.sdk.language",
            "k",
            "service.namespace",
        ]);
        let v = any_value(g, 0.8, 1, SERVICES);
        f.push(Field::msg(
            1,
            Kind::KeyValue,
            kv_fields(g, Some(k), Some(v)),
        ));
    }
    if g.chance(0.1) {
        f.push(Field::varint(2, g.range(0, 10) as u64));
    }
    if g.chance(0.05) {
        let mut e = vec![
            Field::bytes(2, "service"),
            Field::bytes(3, "service.name"),
            Field::bytes(4, "host.name"),
        ];
        add_unknown(g, &mut e, Kind::EntityRef, 0.3, 1);
        order(g, &mut e, 0.5);
        f.push(Field::msg(3, Kind::EntityRef, e));
    }
    add_unknown(g, &mut f, Kind::Resource, 0.1, 2);
    order(g, &mut f, 0.5);
    Field::msg(1, Kind::Resource, f)
}

fn scope_logs(g: &mut G, shape: &Shape) -> Field {
    let mut f = Vec::new();
    if g.chance(0.85) {
        let mut s = vec![Field::bytes(1, *g.pick(&["app", "", "io.opentelemetry.x"]))];
        if g.chance(0.5) {
            s.push(Field::bytes(2, "1.0.0"));
        }
        if g.chance(0.2) {
            let v = any_value(g, 0.8, 1, ATTR_VALUES);
            // Not the resource's: a scope attribute named service.name changes nothing.
            let k = *g.pick(&["scope.attr", "service.name"]);
            s.push(Field::msg(
                3,
                Kind::KeyValue,
                kv_fields(g, Some(k), Some(v)),
            ));
        }
        add_unknown(g, &mut s, Kind::Scope, 0.05, 1);
        f.push(Field::msg(1, Kind::Scope, s));
    }
    if g.chance(0.05) {
        // A second scope field: merged.
        f.push(Field::msg(1, Kind::Scope, vec![Field::bytes(2, "2.0")]));
    }
    for _ in 0..g.range(shape.records.0, shape.records.1) {
        f.push(record(g));
    }
    if g.chance(0.3) {
        f.push(Field::bytes(3, "https://opentelemetry.io/schemas/1.26.0"));
    }
    add_unknown(g, &mut f, Kind::ScopeLogs, 0.1, 2);
    // Records keep their order (they are what the test follows); the rest goes anywhere.
    if g.chance(0.5) {
        let (recs, mut rest): (Vec<Field>, Vec<Field>) = f
            .into_iter()
            .partition(|x| x.num == 2 && x.kind() == Some(Kind::LogRecord));
        g.shuffle(&mut rest);
        f = recs;
        for x in rest {
            let at = g.range(0, f.len());
            f.insert(at, x);
        }
    }
    Field::msg(2, Kind::ScopeLogs, f)
}

fn resource_logs(g: &mut G, shape: &Shape) -> Field {
    let mut f = Vec::new();
    let resources = match g.weighted(&[15, 75, 10]) {
        0 => 0,
        1 => 1,
        _ => 2,
    };
    for _ in 0..resources {
        f.push(resource(g));
    }
    for _ in 0..g.range(shape.scope_logs.0, shape.scope_logs.1) {
        f.push(scope_logs(g, shape));
    }
    if g.chance(0.3) {
        f.push(Field::bytes(3, "https://opentelemetry.io/schemas/1.26.0"));
    }
    add_unknown(g, &mut f, Kind::ResourceLogs, 0.15, 2);
    // Scopes keep their order among themselves; the resource may come after them.
    if g.chance(0.5) {
        let (scopes, mut rest): (Vec<Field>, Vec<Field>) = f.into_iter().partition(|x| x.num == 2);
        g.shuffle(&mut rest);
        f = scopes;
        for x in rest {
            let at = g.range(0, f.len());
            f.insert(at, x);
        }
    }
    Field::msg(1, Kind::ResourceLogs, f)
}

/// Largest body generated: well inside the agent's 256 KiB request bound, and small enough
/// that a request written in pieces fits the kernel's cork (17 scatterlist elements) however
/// memory is fragmented.
pub const MAX_BODY: usize = 96 * 1024;

/// The top-level fields of a random ExportLogsServiceRequest (at most [`MAX_BODY`] bytes).
pub fn request(g: &mut G) -> Vec<Field> {
    loop {
        let f = request_any_size(g);
        if super::wire::fields_len(&f) <= MAX_BODY {
            return f;
        }
    }
}

fn request_any_size(g: &mut G) -> Vec<Field> {
    let shape = Shape::random(g);
    let mut f = Vec::new();
    if !g.chance(0.03) {
        for _ in 0..g.range(shape.resource_logs.0, shape.resource_logs.1) {
            f.push(resource_logs(g, &shape));
        }
    }
    add_unknown(g, &mut f, Kind::Request, 0.1, 2);
    pad_some(g, &mut f);
    f
}

/// Pads some tags, length prefixes and varints (non-minimal encodings decoders accept).
pub fn pad_some(g: &mut G, fields: &mut [Field]) {
    for f in fields.iter_mut() {
        if g.chance(0.03) {
            f.tag_pad = g.range(1, 2) as u8;
        }
        match &mut f.val {
            Val::Varint { pad, .. } if g.chance(0.05) => *pad = g.range(1, 3) as u8,
            Val::Bytes { pad, .. } if g.chance(0.05) => *pad = g.range(1, 3) as u8,
            Val::Msg { pad, fields, .. } => {
                if g.chance(0.06) {
                    *pad = if g.chance(0.2) {
                        g.range(4, 9) as u8
                    } else {
                        g.range(1, 3) as u8
                    };
                }
                pad_some(g, fields);
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------------------------
// Malformed requests

/// Whether dt's contract levels reach into field `num` of `parent`: the messages the rules read
/// (ResourceLogs, Resource, its attributes and their values, ScopeLogs, LogRecord, its body,
/// attributes and their values). A malformation is put at one of these levels, where a decoder
/// of the schema has to see it.
fn descends(parent: Kind, num: u64, child: Kind) -> bool {
    matches!(
        (parent, num, child),
        (Kind::Request, 1, Kind::ResourceLogs)
            | (Kind::ResourceLogs, 1, Kind::Resource)
            | (Kind::ResourceLogs, 2, Kind::ScopeLogs)
            | (Kind::Resource, 1, Kind::KeyValue)
            | (Kind::ScopeLogs, 2, Kind::LogRecord)
            | (Kind::LogRecord, 5, Kind::AnyValue)
            | (Kind::LogRecord, 6, Kind::KeyValue)
            | (Kind::KeyValue, 2, Kind::AnyValue)
    )
}

/// Paths (child indices from the top) of every message at a contract level, with its kind.
fn levels(fields: &[Field], kind: Kind, path: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, Kind)>) {
    out.push((path.clone(), kind));
    for (i, f) in fields.iter().enumerate() {
        if let Val::Msg {
            kind: ck,
            fields: cf,
            ..
        } = &f.val
            && descends(kind, f.num, *ck)
        {
            path.push(i);
            levels(cf, *ck, path, out);
            path.pop();
        }
    }
}

fn at_path<'a>(fields: &'a mut Vec<Field>, path: &[usize]) -> &'a mut Vec<Field> {
    let mut cur = fields;
    for &i in path {
        cur = cur[i].fields_mut().expect("path through messages");
    }
    cur
}

/// A field dt's levels read, with a wire type other than the schema's: decoders must refuse it.
fn wrong_wire_type(g: &mut G, kind: Kind) -> Field {
    let (num, right) = match kind {
        Kind::Request => (1, WT_LEN),
        Kind::ResourceLogs => (*g.pick(&[1u64, 2]), WT_LEN),
        Kind::Resource => (1, WT_LEN),
        Kind::ScopeLogs => (2, WT_LEN),
        Kind::LogRecord => *g.pick(&[(2u64, WT_VARINT), (5, WT_LEN), (6, WT_LEN)]),
        Kind::KeyValue => *g.pick(&[(1u64, WT_LEN), (2, WT_LEN)]),
        _ => *g.pick(&[(1u64, WT_LEN), (2, WT_VARINT), (3, WT_VARINT), (4, WT_I64)]),
    };
    let val = loop {
        let (wt, v) = match g.range(0, 3) {
            0 => (WT_VARINT, Val::Varint { v: 5, pad: 0 }),
            1 => (WT_I64, Val::I64(7)),
            2 => (
                WT_LEN,
                Val::Bytes {
                    data: b"xy".to_vec(),
                    pad: 0,
                },
            ),
            _ => (WT_I32, Val::I32(7)),
        };
        if wt != right {
            break v;
        }
    };
    Field::new(num, val)
}

/// Makes a valid request malformed at one of dt's contract levels. Returns the new body and
/// what was done. `fields` is changed in place (not for truncation).
pub fn malform(g: &mut G, fields: &mut Vec<Field>) -> (Vec<u8>, String) {
    let body = super::wire::encode(fields);
    let which = g.range(0, 7);
    if which == 0 && !body.is_empty() {
        // Cut the body strictly inside a top-level field.
        let mut starts = Vec::new();
        let mut off = 0;
        for f in fields.iter() {
            let n = super::wire::encode_field(f).len();
            if n >= 2 {
                starts.push((off, n));
            }
            off += n;
        }
        if let Some(&(start, n)) = starts.get(g.range(0, starts.len().max(1) - 1)) {
            let cut = start + g.range(1, n - 1);
            return (
                body[..cut].to_vec(),
                format!(
                    "truncated: at {cut} of {} (inside the top-level field at {start}, {n} bytes)",
                    body.len()
                ),
            );
        }
    }
    let mut lv = Vec::new();
    levels(fields, Kind::Request, &mut Vec::new(), &mut lv);
    let (path, kind) = lv[g.range(0, lv.len() - 1)].clone();
    let container = at_path(fields, &path);
    let at = g.range(0, container.len());
    let what = match which {
        1 => {
            // A length prefix past the end of its parent.
            let msgs: Vec<usize> = (0..container.len())
                .filter(|&i| matches!(container[i].val, Val::Msg { .. }))
                .collect();
            let i = if msgs.is_empty() || g.chance(0.2) {
                let v = vec![Field::bytes(1, "abc")];
                container.insert(at, Field::msg(unknown_number(g, kind), Kind::AnyValue, v));
                at
            } else {
                msgs[g.range(0, msgs.len() - 1)]
            };
            let extra = *g.pick(&[0u32, 1, 5, 300, 70000]);
            if let Val::Msg { bad_len, .. } = &mut container[i].val {
                *bad_len = Some(extra);
            }
            format!(
                "bad-length: field {i} (number {}) of the {kind:?} at {path:?}: length prefix {} bytes past its parent",
                container[i].num,
                extra + 1
            )
        }
        2 => {
            // A group (valid protobuf that decoders skip, but not a wire type OTLP uses).
            let num = unknown_number(g, kind);
            let mut start = Field::new(num, Val::Nothing);
            start.wt_override = Some(WT_SGROUP);
            let mut end = Field::new(num, Val::Nothing);
            end.wt_override = Some(WT_EGROUP);
            container.insert(at, end);
            if g.chance(0.5) {
                container.insert(at, Field::varint(1, 3));
            }
            container.insert(at, start);
            format!("group: field {num}, start and end, at {at} of the {kind:?} at {path:?}")
        }
        3 => {
            let num = unknown_number(g, kind);
            let mut end = Field::new(num, Val::Nothing);
            end.wt_override = Some(*g.pick(&[WT_EGROUP, WT_SGROUP, 6, 7]));
            let wt = end.wt_override.unwrap();
            container.insert(at, end);
            format!("lone-tag: wire type {wt}, field {num}, at {at} of the {kind:?} at {path:?}")
        }
        4 => {
            let num = unknown_number(g, kind);
            let raw = if g.chance(0.5) {
                let mut r = vec![0xff; 10];
                r.push(0x01);
                r
            } else {
                let mut r = vec![0xff; 9];
                r.push(0x02);
                r
            };
            let mut f = Field::new(num, Val::Raw(raw));
            f.wt_override = Some(WT_VARINT);
            container.insert(at, f);
            format!("long-varint: field {num}, at {at} of the {kind:?} at {path:?}")
        }
        5 => {
            let mut f = Field::new(0, Val::Varint { v: 1, pad: 0 });
            f.wt_override = Some(*g.pick(&[WT_VARINT, WT_LEN, WT_I32]));
            if f.wt_override == Some(WT_LEN) {
                f.val = Val::Raw(vec![1, b'x']);
            } else if f.wt_override == Some(WT_I32) {
                f.val = Val::Raw(vec![1, 2, 3, 4]);
            }
            container.insert(at, f);
            format!("field-zero: at {at} of the {kind:?} at {path:?}")
        }
        _ => {
            let f = wrong_wire_type(g, kind);
            let desc = format!(
                "wrong-wire-type: field {} with wire type {} at {at} of the {kind:?} at {path:?}",
                f.num,
                f.wire_type()
            );
            container.insert(at, f);
            desc
        }
    };
    (super::wire::encode(fields), what)
}

// ------------------------------------------------------------------------------------------
// HTTP

/// A request head with the Content-Length value left open.
#[derive(Clone, Debug)]
pub struct Head {
    /// Text before and after the Content-Length digits.
    pub before: String,
    pub after: String,
}

impl Head {
    pub fn render(&self, content_length: &str) -> Vec<u8> {
        format!("{}{}{}", self.before, content_length, self.after).into_bytes()
    }
}

fn header_name(g: &mut G, canonical: &str, variety: bool) -> String {
    if !variety {
        return canonical.to_string();
    }
    match g.weighted(&[70, 20, 10]) {
        0 => canonical.to_string(),
        1 => canonical.to_ascii_lowercase(),
        _ => canonical.to_ascii_uppercase(),
    }
}

/// A `POST /v1/logs` head: headers in any order, names in any case, Content-Type with
/// parameters, extra headers of any length (`variety`); otherwise the harness's usual head.
pub fn head(g: &mut G, variety: bool) -> Head {
    let mut headers: Vec<String> = Vec::new();
    headers.push(format!("{}: dt-test", header_name(g, "Host", variety)));
    let ct = if variety && g.chance(0.15) {
        *g.pick(&[
            "application/x-protobuf; charset=binary",
            "application/x-protobuf;proto=opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
            "Application/X-Protobuf",
        ])
    } else {
        "application/x-protobuf"
    };
    headers.push(format!("{}: {ct}", header_name(g, "Content-Type", variety)));
    headers.push("\u{0}CL".to_string());
    if variety {
        if g.chance(0.3) {
            headers.push(format!("{}: */*", header_name(g, "Accept", true)));
        }
        if g.chance(0.2) {
            headers.push(format!(
                "{}: keep-alive",
                header_name(g, "Connection", true)
            ));
        }
        if g.chance(0.3) {
            let n = *g.pick(&[0usize, 1, 50, 700]);
            headers.push(format!("X-Pad: {}", "p".repeat(n)));
        }
        g.shuffle(&mut headers);
    }
    headers.push("User-Agent: dt-tests/0.1".to_string());
    let mut before = String::from("POST /v1/logs HTTP/1.1\r\n");
    let mut after = String::new();
    let mut seen = false;
    for h in headers {
        if h == "\u{0}CL" {
            before += &format!("{}: ", header_name(g, "Content-Length", variety));
            seen = true;
            after += "\r\n";
            continue;
        }
        let line = format!("{h}\r\n");
        if seen {
            after += &line;
        } else {
            before += &line;
        }
    }
    after += "\r\n";
    Head { before, after }
}

/// Write boundaries for a request of `len` bytes whose head is `head_len` bytes: none, a few,
/// or many; inside the head, around its end, anywhere in the body.
pub fn cuts(g: &mut G, len: usize, head_len: usize) -> Vec<usize> {
    let n = match g.weighted(&[40, 45, 15]) {
        0 => 0,
        1 => g.range(1, 3),
        // Large requests in few pieces: each write can take its own scatterlist element of
        // the cork.
        _ if len > 32 * 1024 => g.range(1, 4),
        _ => g.range(4, 12),
    };
    let mut out = Vec::new();
    for _ in 0..n {
        let c = match g.weighted(&[30, 20, 50]) {
            0 => g.range(1, head_len.max(2) - 1),
            1 => (head_len + g.range(0, 4)).saturating_sub(2),
            _ => g.range(head_len, len.max(head_len + 1) - 1),
        };
        if c > 0 && c < len {
            out.push(c);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
