//! Random ExportLogsServiceRequests as field trees, their malformed variants, HTTP heads and
//! write splits.

use super::reference::{self, EnrichAttr};
use super::wire::{
    Field, Kind, Val, WT_EGROUP, WT_I32, WT_I64, WT_LEN, WT_SGROUP, WT_VARINT, fields_len,
    is_single_string,
};
use super::{
    ATTR_KEYS, ATTR_VALUES, ATTRS, BODY_WORDS, BOOL_KEYS, EVENT_NAMES, G, INT_ATTRS, NEEDLES,
    SERVICES, TYPED_LOOKALIKES,
};

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

/// Invalid UTF-8 sequences: a byte that never occurs, a lone lead byte, a lone continuation
/// byte, a surrogate, an over-long encoding, a cut three-byte sequence, a five-byte form.
const BAD_UTF8: &[&[u8]] = &[
    &[0xff],
    &[0xc3],
    &[0x80],
    &[0xed, 0xa0, 0x80],
    &[0xc0, 0xaf],
    &[0xe6, 0x97],
    &[0xf8, 0x88, 0x80, 0x80, 0x80],
];

/// `s`, sometimes (`g.bad_utf8`) with invalid UTF-8 put in at a random byte (strings are bytes
/// to dt: the request stays valid).
pub fn maybe_bad_utf8(g: &mut G, s: impl Into<Vec<u8>>) -> Vec<u8> {
    let mut s = s.into();
    if g.bad_utf8 > 0.0 && g.chance(g.bad_utf8) {
        put_bad_utf8(g, &mut s);
    }
    s
}

/// Puts an invalid UTF-8 sequence into `s` at a random byte.
pub fn put_bad_utf8(g: &mut G, s: &mut Vec<u8>) {
    let at = g.range(0, s.len());
    let bad = *g.pick(BAD_UTF8);
    s.splice(at..at, bad.iter().copied());
}

/// The fields of an AnyValue holding `levels` array and kvlist values inside each other (each
/// level with a few siblings), ending in any value: deep nesting for dt's depth bound.
pub fn deep_value(g: &mut G, levels: usize) -> Vec<Field> {
    if levels == 0 {
        return any_value(g, 0.6, 3, ATTR_VALUES);
    }
    let inner = deep_value(g, levels - 1);
    let mut vals = Vec::new();
    let kvlist = g.chance(0.5);
    for _ in 0..g.range(0, 2) {
        let v = any_value(g, 0.7, 2, ATTR_VALUES);
        vals.push(v);
    }
    let at = g.range(0, vals.len());
    vals.insert(at, inner);
    let mut out: Vec<Field> = vals
        .into_iter()
        .map(|v| {
            if kvlist {
                let k = g.pick(ATTR_KEYS).to_string();
                Field::msg(1, Kind::KeyValue, kv_fields(g, Some(&k), Some(v)))
            } else {
                Field::msg(1, Kind::AnyValue, v)
            }
        })
        .collect();
    let kind = if kvlist {
        Kind::KeyValueList
    } else {
        Kind::ArrayValue
    };
    add_unknown(g, &mut out, kind, 0.05, 1);
    let mut any = vec![Field::msg(if kvlist { 6 } else { 5 }, kind, out)];
    add_unknown(g, &mut any, Kind::AnyValue, 0.05, 1);
    any
}

/// How many array and kvlist levels a deep value gets: a few, or enough to reach dt's depth
/// bound from wherever it is put (near it, and past it).
fn deep_levels(g: &mut G) -> usize {
    if g.chance(0.5) {
        g.range(1, 6)
    } else {
        g.range(7, 16)
    }
}

/// Puts a value nesting `levels` array and kvlist values somewhere values go: a record's body
/// or attribute, a resource attribute, a scope attribute (nowhere when the request has none).
pub fn insert_deep(g: &mut G, fields: &mut [Field], levels: usize) {
    let mut places: Vec<(Vec<usize>, Kind)> = Vec::new();
    fn collect(fields: &[Field], path: &mut Vec<usize>, out: &mut Vec<(Vec<usize>, Kind)>) {
        for (i, f) in fields.iter().enumerate() {
            if let Val::Msg {
                kind, fields: c, ..
            } = &f.val
            {
                path.push(i);
                if matches!(kind, Kind::LogRecord | Kind::Resource | Kind::Scope) {
                    out.push((path.clone(), *kind));
                }
                if matches!(kind, Kind::ResourceLogs | Kind::ScopeLogs) {
                    collect(c, path, out);
                }
                path.pop();
            }
        }
    }
    collect(fields, &mut Vec::new(), &mut places);
    if places.is_empty() {
        return;
    }
    let (path, kind) = places[g.range(0, places.len() - 1)].clone();
    let mut cur: &mut [Field] = fields;
    let (last, rest) = path.split_last().expect("a path");
    for &i in rest {
        cur = cur[i].fields_mut().expect("a message");
    }
    let container = cur[*last].fields_mut().expect("a message");
    let value = deep_value(g, levels);
    let f = match kind {
        Kind::LogRecord if g.chance(0.3) => {
            // The body: with no string in it (the reference's body-string count stays right).
            container.retain(|x| x.num != 5);
            Field::msg(5, Kind::AnyValue, value)
        }
        Kind::LogRecord => {
            let k = g.pick(ATTR_KEYS).to_string();
            Field::msg(6, Kind::KeyValue, kv_fields(g, Some(&k), Some(value)))
        }
        Kind::Resource => Field::msg(1, Kind::KeyValue, kv_fields(g, Some("k"), Some(value))),
        _ => Field::msg(
            3,
            Kind::KeyValue,
            kv_fields(g, Some("scope.attr"), Some(value)),
        ),
    };
    let at = g.range(0, container.len());
    container.insert(at, f);
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
            let text = some_string(g, strings);
            Field::bytes(1, maybe_bad_utf8(g, text))
        } else {
            match g.range(0, if depth < 3 { 5 } else { 3 }) {
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
        let k = maybe_bad_utf8(g, k);
        fields.push(Field::bytes(1, k));
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

/// A record attribute as SDKs write it: a key from the pool, then one of its string values or
/// an int; sometimes a key of the typed pools with one of their ints (negative ones in 10
/// bytes) or a bool.
fn plain_attribute(g: &mut G) -> Field {
    let (k, value) = match g.weighted(&[80, 12, 8]) {
        0 => {
            let (k, values) = *g.pick(ATTRS);
            let value = if g.chance(0.8) {
                string_any(values[g.range(0, values.len() - 1)])
            } else {
                vec![Field::varint(3, g.range(0, 600) as u64)]
            };
            (k, value)
        }
        1 => {
            let (k, values) = *g.pick(INT_ATTRS);
            (k, vec![Field::varint(3, *g.pick(values) as u64)])
        }
        _ => (
            *g.pick(BOOL_KEYS),
            vec![Field::varint(2, g.chance(0.5) as u64)],
        ),
    };
    Field::msg(
        6,
        Kind::KeyValue,
        vec![
            Field::bytes(1, k.as_bytes()),
            Field::msg(2, Kind::AnyValue, value),
        ],
    )
}

/// The varint of a `bool_value`: 0 or 1 as SDKs write them, or any other (nonzero: true),
/// some in several bytes.
fn bool_varint(g: &mut G) -> u64 {
    *g.pick(&[0u64, 1, 0, 1, 0, 1, 2, 255, 1 << 40, u64::MAX])
}

/// A typed member of an AnyValue: an int (from the pools, or any 64-bit pattern: negative ones
/// take 10 bytes), a bool, or a string that reads like one.
fn typed_member(g: &mut G, ints: &[i64]) -> Field {
    match g.weighted(&[50, 30, 20]) {
        0 => {
            let v = if g.chance(0.8) {
                *g.pick(ints) as u64
            } else {
                any_varint(g)
            };
            Field::varint(3, v)
        }
        1 => Field::varint(2, bool_varint(g)),
        _ => Field::bytes(1, g.pick(TYPED_LOOKALIKES).as_bytes()),
    }
}

/// A record attribute with a typed value under a key rules name with typed conditions (and
/// which other records give other types): usually one member, sometimes two (the last one
/// wins), through [`kv_fields`] (a second key or value sometimes).
fn typed_attribute(g: &mut G) -> Field {
    let (k, ints): (&str, &[i64]) = if g.chance(0.6) {
        *g.pick(INT_ATTRS)
    } else {
        (*g.pick(BOOL_KEYS), &[0, 1, 503])
    };
    let mut any = vec![typed_member(g, ints)];
    if g.chance(0.1) {
        let other = typed_member(g, ints);
        let at = g.range(0, 1);
        any.insert(at, other);
    }
    Field::msg(6, Kind::KeyValue, kv_fields(g, Some(k), Some(any)))
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
    // A share of records as SDKs write them (attributes of a key and a string or int value, no
    // unknown fields): the shape dt's walk takes whole, so the fast path is tested as much as
    // the field walk.
    let plain = g.chance(0.3);
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
        f.push(Field::bytes(3, {
            let t = *g.pick(&["INFO", "DEBUG", "WARN", "", "Error"]);
            maybe_bad_utf8(g, t)
        }));
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
        f.push(if plain {
            plain_attribute(g)
        } else if g.chance(0.15) {
            typed_attribute(g)
        } else {
            record_attribute(g)
        });
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
    if g.chance(0.2) {
        // event_name: usually once, sometimes repeated (the last one wins), sometimes empty
        // (absent to decoders), longer than a rule may name.
        let n = match g.weighted(&[80, 15, 5]) {
            0 => 1,
            1 => 2,
            _ => 3,
        };
        for _ in 0..n {
            let name = match g.weighted(&[80, 10, 5, 5]) {
                0 => g.pick(EVENT_NAMES).to_string(),
                1 => String::new(),
                2 => "e".repeat(g.range(60, 200)),
                _ => "payment.failed.x".to_string(),
            };
            let name = maybe_bad_utf8(g, name);
            f.push(Field::bytes(12, name));
        }
    }
    if !plain {
        add_unknown(g, &mut f, Kind::LogRecord, 0.15, 3);
    }
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
    // At most MAX_BODY_STRINGS ranges that mask_body would overwrite over all body fields
    // (dt's documented limit on body occurrences): drop bodies from the end. A body that is
    // one string is one range when the string is not empty; another value is one range when it
    // has any bytes (it is replaced whole); strings inside that one are in its range.
    let strings = |f: &[Field]| {
        f.iter()
            .filter(|x| x.num == 5)
            .filter_map(Field::fields)
            .map(|any| {
                if is_single_string(any) {
                    any.iter()
                        .filter(|m| matches!(&m.val, Val::Bytes { data, .. } if !data.is_empty()))
                        .count()
                } else {
                    (fields_len(any) >= 2) as usize
                }
            })
            .sum::<usize>()
    };
    while strings(&f) > MAX_BODY_STRINGS {
        let last = f.iter().rposition(|x| x.num == 5).expect("a body");
        f.remove(last);
    }
    // Invalid UTF-8 in a string body, when it is the record's only body string (with more, the
    // overridden ones may arrive masked or not, and the receiver's verdict with them).
    if f.iter().filter(|x| x.num == 5).count() == 1 && g.bad_utf8 > 0.0 && g.chance(0.15) {
        let any = f
            .iter_mut()
            .find(|x| x.num == 5)
            .and_then(Field::fields_mut)
            .expect("a body");
        if any.len() == 1
            && any[0].num == 1
            && let Val::Bytes { data, .. } = &mut any[0].val
        {
            put_bad_utf8(g, data);
        }
    }
    Field::msg(2, Kind::LogRecord, f)
}

/// A resource: `service.name` (usually once, a string; sometimes missing, twice, not a string,
/// or without a value), other attributes (`host.name` among them), sometimes `process.pid` (an
/// int, a string, no value, an empty value; sometimes under a key that only looks like it: what
/// `[enrich]` adds only when a Resource lacks it), entity refs and unknown fields.
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
    if g.chance(0.12) {
        let k = if g.chance(0.8) {
            "process.pid"
        } else {
            *g.pick(&[
                "Process.pid",
                "process.pid ",
                "process.pi",
                "host.name.x",
                "Host.name",
            ])
        };
        let v = match g.weighted(&[50, 20, 15, 15]) {
            0 => Some(vec![Field::varint(3, g.range(1, 1 << 22) as u64)]),
            1 => {
                let s = *g.pick(&["4242", "", "process.pid"]);
                Some(string_any(s))
            }
            2 => None,
            _ => Some(Vec::new()),
        };
        f.push(Field::msg(1, Kind::KeyValue, kv_fields(g, Some(k), v)));
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
        let name = *g.pick(&["app", "", "io.opentelemetry.x"]);
        let name = maybe_bad_utf8(g, name);
        let mut s = vec![Field::bytes(1, name)];
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

// ------------------------------------------------------------------------------------------
// Shapes for `[enrich]`

/// Adds ResourceLogs (small ones, some with a resource) at random places until `want` of them
/// (or more) lack something `attrs` adds: around dt's bound on ResourceLogs enriched in one
/// request ([`super::reference::MAX_ENRICHED`]). Stops short of `max_body` bytes.
pub fn more_resource_logs(
    g: &mut G,
    fields: &mut Vec<Field>,
    attrs: &[EnrichAttr],
    want: usize,
    max_body: usize,
) {
    if attrs.is_empty() {
        return;
    }
    let shape = Shape {
        resource_logs: (1, 1),
        scope_logs: (0, 1),
        records: (0, 1),
    };
    let needing = |fields: &[Field]| {
        fields
            .iter()
            .filter(|f| f.num == 1)
            .filter(|rl| !reference::missing(rl, attrs).is_empty())
            .count()
    };
    let mut n = needing(fields);
    for _ in 0..4 * want {
        if n >= want {
            break;
        }
        let rl = if g.chance(0.5) {
            Field::msg(1, Kind::ResourceLogs, Vec::new())
        } else {
            resource_logs(g, &shape)
        };
        if super::wire::fields_len(fields) + super::wire::field_len(&rl) > max_body {
            break;
        }
        n += !reference::missing(&rl, attrs).is_empty() as usize;
        let at = g.range(0, fields.len());
        fields.insert(at, rl);
    }
}

/// Makes one ResourceLogs that lacks something `attrs` adds (a new empty one when none fits)
/// just fit, or just not fit, its length prefix once dt inserts its resource: its length
/// brought (with an unknown field) to a few bytes around 127 or 16383 minus the insert, its
/// prefix minimal; or (`padded`) the same in a prefix one byte longer than it needs, which
/// holds the insert. At most `max_body` bytes in all (else nothing changes). Returns the
/// ResourceLogs' length before dt inserts, and the bound.
pub fn near_prefix_bound(
    g: &mut G,
    fields: &mut Vec<Field>,
    attrs: &[EnrichAttr],
    padded: bool,
    max_body: usize,
) -> Option<(u64, u64)> {
    if attrs.is_empty() {
        return None;
    }
    let width = if g.chance(0.7) { 1 } else { 2 };
    let cap = reference::prefix_cap(width);
    let delta: i64 = *g.pick(&[-2, -1, 0, 0, 1, 1, 2]);
    let total = super::wire::fields_len(fields) as u64;
    // The length a ResourceLogs must have for its insert to overshoot the bound by `delta`.
    let target_for = |rl: &Field| -> Option<(u64, u64)> {
        let add = reference::resource_field(&reference::missing(rl, attrs)).len() as u64;
        let len = super::wire::fields_len(rl.fields().expect("a ResourceLogs")) as u64;
        let target = (cap as i64 + delta - add as i64).max(0) as u64;
        (add > 0 && len + 2 <= target && total + (target - len) + 3 <= max_body as u64)
            .then_some((len, target))
    };
    let candidates: Vec<usize> = (0..fields.len())
        .filter(|&i| fields[i].num == 1 && target_for(&fields[i]).is_some())
        .collect();
    let i = if candidates.is_empty() {
        let rl = Field::msg(1, Kind::ResourceLogs, Vec::new());
        target_for(&rl)?;
        let at = g.range(0, fields.len());
        fields.insert(at, rl);
        at
    } else {
        candidates[g.range(0, candidates.len() - 1)]
    };
    let (len, target) = target_for(&fields[i]).expect("a candidate");
    let filler = filler(g, (target - len) as usize);
    let rl = &mut fields[i];
    let inner = rl.fields_mut().expect("a ResourceLogs");
    let at = g.range(0, inner.len());
    inner.insert(at, filler);
    if let Val::Msg { pad, .. } = &mut rl.val {
        *pad = padded as u8;
    }
    debug_assert_eq!(
        super::wire::fields_len(rl.fields().expect("a ResourceLogs")) as u64,
        target
    );
    Some((target, cap))
}

/// An unknown ResourceLogs field of exactly `n` bytes (at least 2): tag, length prefix (padded
/// when no minimal one makes `n`), random bytes.
fn filler(g: &mut G, n: usize) -> Field {
    assert!(n >= 2, "a filler of {n} bytes");
    let mut num = unknown_number(g, Kind::ResourceLogs);
    if super::wire::varint_len(num << 3) + 1 > n {
        num = 4;
    }
    let tag = super::wire::varint_len(num << 3);
    for k in 1..=3usize {
        let Some(data_len) = n.checked_sub(tag + k) else {
            break;
        };
        let need = super::wire::varint_len(data_len as u64);
        if need <= k {
            let data = g.bytes(data_len);
            return Field::new(
                num,
                Val::Bytes {
                    data,
                    pad: (k - need) as u8,
                },
            );
        }
    }
    unreachable!("no filler of {n} bytes")
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
    // Invalid UTF-8 in a few requests' strings.
    g.bad_utf8 = if g.chance(0.1) { 0.05 } else { 0.0 };
    let shape = Shape::random(g);
    let mut f = Vec::new();
    if !g.chance(0.03) {
        for _ in 0..g.range(shape.resource_logs.0, shape.resource_logs.1) {
            f.push(resource_logs(g, &shape));
        }
    }
    add_unknown(g, &mut f, Kind::Request, 0.1, 2);
    if g.chance(0.08) {
        for _ in 0..g.range(1, 2) {
            let levels = deep_levels(g);
            insert_deep(g, &mut f, levels);
        }
    }
    pad_some(g, &mut f);
    g.bad_utf8 = 0.0;
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

/// The wire type of field `num` of `kind` in the schema (opentelemetry-proto 0.33, as the
/// oracle decodes it), `None` for a field it does not define.
pub fn schema_wire_type(kind: Kind, num: u64) -> Option<u8> {
    Some(match (kind, num) {
        (Kind::Request, 1) => WT_LEN,
        (Kind::ResourceLogs | Kind::ScopeLogs, 1..=3) => WT_LEN,
        (Kind::Resource, 1 | 3) => WT_LEN,
        (Kind::Resource, 2) => WT_VARINT,
        (Kind::Scope, 1..=3) => WT_LEN,
        (Kind::Scope, 4) => WT_VARINT,
        (Kind::LogRecord, 1 | 11) => WT_I64,
        (Kind::LogRecord, 2 | 7) => WT_VARINT,
        (Kind::LogRecord, 8) => WT_I32,
        (Kind::LogRecord, 3 | 5 | 6 | 9 | 10 | 12) => WT_LEN,
        (Kind::KeyValue, 1 | 2) => WT_LEN,
        (Kind::AnyValue, 1 | 5 | 6 | 7) => WT_LEN,
        (Kind::AnyValue, 2 | 3) => WT_VARINT,
        (Kind::AnyValue, 4) => WT_I64,
        (Kind::ArrayValue | Kind::KeyValueList, 1) => WT_LEN,
        (Kind::EntityRef, 1..=4) => WT_LEN,
        _ => return None,
    })
}

/// The fields `kind` defines with wire type `wt`.
fn schema_fields(kind: Kind, wt: u8) -> Vec<u64> {
    (1..=12)
        .filter(|&n| schema_wire_type(kind, n) == Some(wt))
        .collect()
}

/// A field number for a defect in a `kind`: one the schema defines with wire type `wt` when
/// there is one (half the time), else an unknown one.
fn defect_number(g: &mut G, kind: Kind, wt: u8) -> u64 {
    let known = schema_fields(kind, wt);
    if !known.is_empty() && g.chance(0.5) {
        *g.pick(&known)
    } else {
        unknown_number(g, kind)
    }
}

/// Every message of the tree (paths of child indices from the top, and kinds), the request
/// included.
fn messages(
    fields: &[Field],
    kind: Kind,
    path: &mut Vec<usize>,
    out: &mut Vec<(Vec<usize>, Kind)>,
) {
    out.push((path.clone(), kind));
    for (i, f) in fields.iter().enumerate() {
        if let Val::Msg {
            kind: ck,
            fields: cf,
            ..
        } = &f.val
        {
            path.push(i);
            messages(cf, *ck, path, out);
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

/// A raw field: `num` with wire type `wt` in its tag, then `raw` as it is.
fn raw(num: u64, wt: u8, raw: Vec<u8>) -> Field {
    let mut f = Field::new(num, Val::Raw(raw));
    f.wt_override = Some(wt);
    f
}

/// An over-long varint: 11 bytes, or 10 whose last byte overflows 64 bits.
fn long_varint(g: &mut G) -> Vec<u8> {
    if g.chance(0.5) {
        let mut r = vec![0xff; 10];
        r.push(0x01);
        r
    } else {
        let mut r = vec![0xff; 9];
        r.push(*g.pick(&[0x02u8, 0x7f]));
        r
    }
}

/// A value of wire type `wt` (not a group), as raw bytes after the tag.
fn value_of(g: &mut G, wt: u8) -> Vec<u8> {
    match wt {
        WT_VARINT => {
            let mut o = Vec::new();
            super::wire::put_varint(&mut o, any_varint(g), 0);
            o
        }
        WT_I64 => g.bytes(8),
        WT_I32 => g.bytes(4),
        _ => {
            let n = g.range(0, 4);
            let mut o = vec![n as u8];
            o.extend(g.bytes(n));
            o
        }
    }
}

/// Makes a valid request malformed, or at least suspicious, at any depth of any message: the
/// oracle, not this function, says whether it is. Returns the new body and what was done.
/// `fields` is changed in place (not for truncation).
pub fn malform(g: &mut G, fields: &mut Vec<Field>) -> (Vec<u8>, String) {
    let body = super::wire::encode(fields);
    let which = g.range(0, 11);
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
    // A message at a depth chosen uniformly among the depths the tree has.
    let mut all = Vec::new();
    messages(fields, Kind::Request, &mut Vec::new(), &mut all);
    let deepest = all.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let d = g.range(0, deepest);
    let at_d: Vec<&(Vec<usize>, Kind)> = all.iter().filter(|(p, _)| p.len() == d).collect();
    let (path, kind) = at_d[g.range(0, at_d.len() - 1)].clone();
    let depth = path.len();
    let container = at_path(fields, &path);
    let at = g.range(0, container.len());
    let end = container.len();
    let what = match which {
        0 | 1 => {
            // A length prefix past the end of its parent: a message of the tree, or a new one.
            let msgs: Vec<usize> = (0..container.len())
                .filter(|&i| matches!(container[i].val, Val::Msg { .. }))
                .collect();
            let i = if msgs.is_empty() || g.chance(0.2) {
                let v = vec![Field::bytes(1, "abc")];
                let num = defect_number(g, kind, WT_LEN);
                container.insert(at, Field::msg(num, Kind::AnyValue, v));
                at
            } else {
                msgs[g.range(0, msgs.len() - 1)]
            };
            let extra = *g.pick(&[0u32, 1, 5, 300, 70000]);
            if let Val::Msg { bad_len, .. } = &mut container[i].val {
                *bad_len = Some(extra);
            }
            format!(
                "bad-length: field {i} (number {}) of the {kind:?} at depth {depth} {path:?}: length prefix {} bytes past its parent",
                container[i].num,
                extra + 1
            )
        }
        2 => {
            // A string or bytes field (bytes_value, a key, trace_id...) whose length runs past
            // its message, at the message's end.
            let num = defect_number(g, kind, WT_LEN);
            let n = g.range(0, 5);
            let extra = *g.pick(&[1usize, 2, 100, 1 << 20]);
            let mut r = Vec::new();
            super::wire::put_varint(&mut r, (n + extra) as u64, 0);
            r.extend(g.bytes(n));
            container.push(raw(num, WT_LEN, r));
            format!(
                "bad-bytes-length: field {num} of the {kind:?} at depth {depth} {path:?}: {n} bytes left, {} claimed",
                n + extra
            )
        }
        3 => {
            // A varint, a length prefix or a fixed-size value cut by the end of its message.
            let wt = *g.pick(&[WT_VARINT, WT_VARINT, WT_LEN, WT_I64, WT_I32]);
            let num = defect_number(g, kind, wt);
            let r = match wt {
                WT_I64 => {
                    let n = g.range(0, 7);
                    g.bytes(n)
                }
                WT_I32 => {
                    let n = g.range(0, 3);
                    g.bytes(n)
                }
                _ => (0..g.range(1, 3)).map(|_| 0x80 | g.u32() as u8).collect(),
            };
            container.push(raw(num, wt, r));
            format!(
                "truncated-value: field {num} wire type {wt} at the end of the {kind:?} at depth {depth} {path:?}"
            )
        }
        4 => {
            // An over-long varint: a value, or a length prefix.
            let wt = if g.chance(0.3) { WT_LEN } else { WT_VARINT };
            let num = defect_number(g, kind, wt);
            let r = long_varint(g);
            container.insert(at, raw(num, wt, r));
            format!(
                "long-varint: field {num} wire type {wt}, at {at} of the {kind:?} at depth {depth} {path:?}"
            )
        }
        5 => {
            let wt = *g.pick(&[WT_VARINT, WT_LEN, WT_I32, WT_I64]);
            let r = value_of(g, wt);
            container.insert(at, raw(0, wt, r));
            format!("field-zero: wire type {wt}, at {at} of the {kind:?} at depth {depth} {path:?}")
        }
        6 | 7 => {
            // A field the schema defines, with another wire type: a new one, or one of the
            // tree's retyped in place (a fixed64 time as a varint, a message as a varint...).
            let known: Vec<usize> = (0..container.len())
                .filter(|&i| {
                    schema_wire_type(kind, container[i].num).is_some()
                        && !matches!(container[i].val, Val::Raw(_) | Val::Nothing)
                })
                .collect();
            let (i, num, right) = if !known.is_empty() && g.chance(0.5) {
                let i = known[g.range(0, known.len() - 1)];
                let num = container[i].num;
                (i, num, schema_wire_type(kind, num).expect("known"))
            } else {
                let nums: Vec<u64> = (1..=12)
                    .filter(|&n| schema_wire_type(kind, n).is_some())
                    .collect();
                let num = *g.pick(&nums);
                container.insert(at, Field::varint(num, 0));
                (at, num, schema_wire_type(kind, num).expect("known"))
            };
            let wt = loop {
                let wt = *g.pick(&[WT_VARINT, WT_I64, WT_LEN, WT_I32, WT_SGROUP, WT_EGROUP]);
                if wt != right {
                    break wt;
                }
            };
            let r = match wt {
                WT_SGROUP | WT_EGROUP => Vec::new(),
                _ => value_of(g, wt),
            };
            container[i] = raw(num, wt, r);
            if wt == WT_SGROUP {
                let mut end = Field::new(num, Val::Nothing);
                end.wt_override = Some(WT_EGROUP);
                container.insert(i + 1, end);
            }
            format!(
                "wrong-wire-type: field {num} with wire type {wt} (not {right}) at {i} of the {kind:?} at depth {depth} {path:?}"
            )
        }
        8 | 9 => {
            // Groups in an unknown field: balanced (prost skips them, dt refuses them), nested,
            // with a mismatched end, or never ended.
            let num = unknown_number(g, kind);
            let mut group = vec![{
                let mut f = Field::new(num, Val::Nothing);
                f.wt_override = Some(WT_SGROUP);
                f
            }];
            if g.chance(0.5) {
                group.push(Field::varint(1, 3));
            }
            if g.chance(0.2) {
                let mut s = Field::new(num + 1, Val::Nothing);
                s.wt_override = Some(WT_SGROUP);
                let mut e = Field::new(num + 1, Val::Nothing);
                e.wt_override = Some(WT_EGROUP);
                group.push(s);
                group.push(Field::new(2, Val::I32(7)));
                group.push(e);
            }
            let shape = g.weighted(&[70, 15, 15]);
            match shape {
                0 => {
                    let mut e = Field::new(num, Val::Nothing);
                    e.wt_override = Some(WT_EGROUP);
                    group.push(e);
                }
                1 => {
                    let mut e = Field::new(num + 7, Val::Nothing);
                    e.wt_override = Some(WT_EGROUP);
                    group.push(e);
                }
                _ => {}
            }
            let pos = if shape == 2 { end } else { at };
            let n = group.len();
            for (k, f) in group.into_iter().enumerate() {
                container.insert(pos + k, f);
            }
            format!(
                "group: field {num}, {}, {n} tags at {pos} of the {kind:?} at depth {depth} {path:?}",
                ["balanced", "mismatched end", "never ended"][shape]
            )
        }
        _ => {
            let num = unknown_number(g, kind);
            let wt = *g.pick(&[WT_EGROUP, 6, 7]);
            let mut f = Field::new(num, Val::Nothing);
            f.wt_override = Some(wt);
            container.insert(at, f);
            format!(
                "lone-tag: wire type {wt}, field {num}, at {at} of the {kind:?} at depth {depth} {path:?}"
            )
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

// ------------------------------------------------------------------------------------------
// Chunked framing (README, "Chunked requests")

/// How a request's body is framed with `Transfer-Encoding: chunked`.
#[derive(Clone, Debug)]
pub enum Chunking {
    /// One data chunk (how the Node.js SDK sends): its size in `digits` hex digits (leading
    /// zeros), upper or lower case, then `ext` (empty, or `;name=value` extensions).
    One {
        digits: usize,
        upper: bool,
        ext: String,
    },
    /// Several data chunks: their sizes (all above 0, summing to the body's length), each size
    /// line as written.
    Several {
        sizes: Vec<usize>,
        lines: Vec<String>,
    },
}

/// Chunk extensions dt follows (`;name=value`, up to the 64-byte size line).
const CHUNK_EXTS: &[&str] = &[";name=value", ";a=b", ";a=b;c=d", ";x=1"];

/// The widest chunk size the generator writes, leading zeros included (dt follows size lines of
/// up to 64 bytes; it rewrites the last ten digits of a wider size, the zeros before stay).
pub const MAX_SIZE_DIGITS: usize = 16;

/// Digits for a chunk size `n` (leading zeros sometimes), and whether in upper case.
fn size_digits(g: &mut G, n: usize) -> (usize, bool) {
    let need = format!("{n:x}").len();
    let digits = need
        + match g.weighted(&[60, 25, 15]) {
            0 => 0,
            1 => 1,
            _ => g.range(2, 12),
        };
    (digits.min(MAX_SIZE_DIGITS).max(need), g.chance(0.4))
}

fn hex_size(n: usize, digits: usize, upper: bool) -> String {
    if upper {
        format!("{n:0digits$X}")
    } else {
        format!("{n:0digits$x}")
    }
}

impl Chunking {
    /// One data chunk for a body of `len` bytes (above 0).
    pub fn one(g: &mut G, len: usize) -> Chunking {
        let (digits, upper) = size_digits(g, len);
        let ext = if g.chance(0.25) {
            g.pick(CHUNK_EXTS).to_string()
        } else {
            String::new()
        };
        Chunking::One { digits, upper, ext }
    }

    /// 2 to 10 data chunks (at most `len`) for a body of `len` bytes, cut at random points.
    pub fn several(g: &mut G, len: usize) -> Chunking {
        let n = g.range(2, 10).min(len);
        let mut cuts = vec![0, len];
        while cuts.len() < n + 1 {
            let c = g.range(1, len - 1);
            if !cuts.contains(&c) {
                cuts.push(c);
            }
        }
        cuts.sort_unstable();
        let sizes: Vec<usize> = cuts.windows(2).map(|w| w[1] - w[0]).collect();
        let lines = sizes
            .iter()
            .map(|&s| {
                let (digits, upper) = size_digits(g, s);
                let ext = if g.chance(0.15) {
                    *g.pick(CHUNK_EXTS)
                } else {
                    ""
                };
                format!("{}{ext}", hex_size(s, digits, upper))
            })
            .collect();
        Chunking::Several { sizes, lines }
    }

    /// The chunked encoding of `body` (whose length this framing was made for).
    pub fn frame(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Chunking::One { digits, upper, ext } => {
                out.extend_from_slice(hex_size(body.len(), *digits, *upper).as_bytes());
                out.extend_from_slice(ext.as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            Chunking::Several { sizes, lines } => {
                let mut at = 0;
                for (s, l) in sizes.iter().zip(lines) {
                    out.extend_from_slice(l.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&body[at..at + s]);
                    out.extend_from_slice(b"\r\n");
                    at += s;
                }
                assert_eq!(at, body.len(), "generator bug: chunk sizes");
            }
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// What dt must send on for a chunked request of `old_len` body bytes whose body it edited
    /// to `new_body` (`planned`: dt's plan had anything in it; `resized`: it removed or
    /// inserted bytes, even as many as it removed). The body starts at `.1`.
    /// - One chunk: when bytes were removed or inserted, the size rewritten in lowercase hex,
    ///   zero-padded to the digits it had (else left as sent, like a Content-Length), the
    ///   extensions kept.
    /// - Several: rewritten as one chunk when planned (the size in lowercase hex, zero-padded
    ///   to the digits the old length needs, no extension), else as sent.
    pub fn edited(
        &self,
        old_len: usize,
        new_body: &[u8],
        planned: bool,
        resized: bool,
    ) -> (Vec<u8>, usize) {
        let prefix = match self {
            Chunking::One { digits, ext, upper } => {
                let upper = *upper && !resized;
                format!("{}{ext}\r\n", hex_size(new_body.len(), *digits, upper))
            }
            Chunking::Several { lines, .. } => {
                if !planned {
                    return (self.frame(new_body), lines[0].len() + 2);
                }
                let digits = format!("{old_len:x}").len();
                format!("{}\r\n", hex_size(new_body.len(), digits, false))
            }
        };
        let mut out = prefix.as_bytes().to_vec();
        out.extend_from_slice(new_body);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        (out, prefix.len())
    }
}

impl Head {
    /// This head with `Transfer-Encoding: chunked` where its Content-Length was (render it with
    /// `"chunked"`).
    pub fn to_chunked(&self, g: &mut G, variety: bool) -> Head {
        let cut = self
            .before
            .rfind("\r\n")
            .expect("a request line before the header")
            + 2;
        Head {
            before: format!(
                "{}{}: ",
                &self.before[..cut],
                header_name(g, "Transfer-Encoding", variety)
            ),
            after: self.after.clone(),
        }
    }
}
