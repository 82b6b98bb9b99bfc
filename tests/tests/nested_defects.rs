//! Defects deep inside values no rule reads: a request that a real protobuf
//! decoder rejects passes through byte for byte, counted `malformed`, wherever its defect is.
//!
//! - On the host, dt's walker against the oracle (prost over the OTLP logs schema with strings
//!   as bytes, `dt_tests::oracle`) on many random mutations of requests full of nested kvlist
//!   and array values: the walker never accepts what the oracle rejects.
//! - Through the kernel, the request of the issue and a generated family like it: defects at
//!   every depth of kvlist and array values, in bodies, record attributes, resource and scope
//!   attributes; each arrives byte for byte, and the connection goes on being filtered.

use dt_agent::rules::{HostEnv, SlotTable, compile, load_sources};
use dt_ebpf_common::walk::{Walk, run};
use dt_ebpf_common::wire::{Error, SliceSource};
use dt_tests::oracle::structurally_valid;
use dt_tests::{
    HttpRequestBuilder, RawClient, Receiver, Split, TempRules, WAIT, kernel_or_skip, start_agent,
    stats_of,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RULES: &str =
    "[[rule]]\nname = \"drop-debug\"\naction = \"drop\"\n[rule.match]\nseverity = \"DEBUG\"\n";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The reported request: a DEBUG record, then a WARN record whose kvlist body holds a
/// KeyValue whose length runs past its end.
const ISSUE_REQUEST: &str = "0a2e0a150a130a0c736572766963652e6e616d6512030a01731215120710052a030a0164120a100d2a0632040a056162";

// ------------------------------------------------------------------------------------------
// A small encoder for requests with nested values and a defect at a chosen place

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_len(out: &mut Vec<u8>, num: u64, payload: &[u8]) {
    varint(out, num << 3 | 2);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// The ways a nested message is broken, each one a structural error for prost.
#[derive(Clone, Copy, Debug)]
enum Defect {
    /// A field's length runs past the end of its message.
    LengthPastEnd,
    /// A known field with another wire type (an AnyValue's int_value as length-delimited).
    WrongWireType,
    /// The message ends inside a varint.
    TruncatedVarint,
    /// A tag with field number 0.
    FieldZero,
    /// An 11-byte varint.
    LongVarint,
}

const DEFECTS: [Defect; 5] = [
    Defect::LengthPastEnd,
    Defect::WrongWireType,
    Defect::TruncatedVarint,
    Defect::FieldZero,
    Defect::LongVarint,
];

/// Appends the broken bytes of `defect` to a message's payload.
fn break_payload(payload: &mut Vec<u8>, defect: Defect) {
    match defect {
        // A KeyValue (field 1 of a KeyValueList, or an AnyValue of an ArrayValue: both field
        // 1) claiming 9 bytes where 2 are left.
        Defect::LengthPastEnd => payload.extend_from_slice(&[0x0a, 0x09, 0x0a, 0x00]),
        // Field 3 with wire type 2 where an AnyValue's int_value is a varint; elsewhere field 3
        // of KeyValueList/ArrayValue is unknown, so use field 1 as a varint (it is a message).
        Defect::WrongWireType => payload.extend_from_slice(&[0x08, 0x01]),
        Defect::TruncatedVarint => payload.extend_from_slice(&[0x18, 0x80]),
        Defect::FieldZero => payload.extend_from_slice(&[0x00, 0x01]),
        Defect::LongVarint => {
            payload.push(0x18);
            payload.extend_from_slice(&[0x80; 10]);
            payload.push(0x01);
        }
    }
}

/// An AnyValue nested `depth` more levels (alternating kvlist and array), with `defect` in the
/// innermost kvlist or array when given.
fn nested_value(rng: &mut ChaCha8Rng, depth: u32, defect: Option<Defect>) -> Vec<u8> {
    let mut any = Vec::new();
    if depth == 0 {
        match rng.random_range(0..4) {
            0 => field_len(&mut any, 1, b"leaf"),
            1 => {
                any.push(0x18);
                varint(&mut any, rng.random_range(0..1_000_000));
            }
            2 => {
                any.push(0x21);
                any.extend_from_slice(&1.5f64.to_le_bytes());
            }
            _ => field_len(&mut any, 7, &[0xde, 0xad]),
        }
        return any;
    }
    let mut payload = Vec::new();
    let kvlist = rng.random_bool(0.5);
    for i in 0..rng.random_range(1..3) {
        let inner = nested_value(rng, depth - 1, if i == 0 { defect } else { None });
        if kvlist {
            let mut kv = Vec::new();
            field_len(&mut kv, 1, format!("k{i}").as_bytes());
            field_len(&mut kv, 2, &inner);
            field_len(&mut payload, 1, &kv);
        } else {
            field_len(&mut payload, 1, &inner);
        }
    }
    if depth == 1
        && let Some(d) = defect
    {
        break_payload(&mut payload, d);
    }
    field_len(&mut any, if kvlist { 6 } else { 5 }, &payload);
    any
}

/// Where the broken value goes.
#[derive(Clone, Copy, Debug)]
enum Place {
    Body,
    RecordAttr,
    ResourceAttr,
    ScopeAttr,
}

const PLACES: [Place; 4] = [
    Place::Body,
    Place::RecordAttr,
    Place::ResourceAttr,
    Place::ScopeAttr,
];

/// A request of a DEBUG and a WARN record (the rules drop DEBUG), with a nested value of
/// `depth` levels at `place`, broken by `defect` in its innermost level when given.
fn request(rng: &mut ChaCha8Rng, place: Place, depth: u32, defect: Option<Defect>) -> Vec<u8> {
    let value = nested_value(rng, depth, defect);
    let kv = |key: &[u8], v: &[u8]| {
        let mut kv = Vec::new();
        field_len(&mut kv, 1, key);
        field_len(&mut kv, 2, v);
        kv
    };
    let mut svc = Vec::new();
    field_len(&mut svc, 1, b"svc");
    let mut resource = Vec::new();
    field_len(&mut resource, 1, &kv(b"service.name", &svc));
    if let Place::ResourceAttr = place {
        field_len(&mut resource, 1, &kv(b"nested", &value));
    }
    let mut debug = vec![0x10, 0x05];
    field_len(&mut debug, 5, &svc);
    let mut warn = vec![0x10, 0x0d];
    match place {
        Place::Body => field_len(&mut warn, 5, &value),
        Place::RecordAttr => field_len(&mut warn, 6, &kv(b"nested", &value)),
        _ => field_len(&mut warn, 5, &svc),
    }
    let mut scope_logs = Vec::new();
    if let Place::ScopeAttr = place {
        let mut scope = Vec::new();
        field_len(&mut scope, 1, b"lib");
        field_len(&mut scope, 3, &kv(b"nested", &value));
        field_len(&mut scope_logs, 1, &scope);
    }
    field_len(&mut scope_logs, 2, &debug);
    field_len(&mut scope_logs, 2, &warn);
    let mut rl = Vec::new();
    field_len(&mut rl, 1, &resource);
    field_len(&mut rl, 2, &scope_logs);
    let mut body = Vec::new();
    field_len(&mut body, 1, &rl);
    body
}

/// The host walker's verdict on `body` under [`RULES`].
fn host_walk(body: &[u8]) -> Result<(), Error> {
    let defs = load_sources(&[("r.toml".into(), RULES.to_string())]).expect("rules load");
    let compiled = compile(&defs, &mut SlotTable::new()).expect("rules compile");
    // SAFETY: `Walk` is plain old data; all zeroes is valid.
    let mut walk = Box::new(unsafe { std::mem::zeroed::<Walk>() });
    walk.start(0, body.len() as u32, 0, 0);
    let mut env = HostEnv::new(&compiled);
    run(&mut walk, &mut SliceSource(body), &mut env)
}

#[test]
fn generated_defects_are_invalid_for_prost_and_valid_twins_are_valid() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for place in PLACES {
        for depth in 1..=6 {
            for defect in DEFECTS {
                let seed = rng.random();
                let bad = request(
                    &mut ChaCha8Rng::seed_from_u64(seed),
                    place,
                    depth,
                    Some(defect),
                );
                let good = request(&mut ChaCha8Rng::seed_from_u64(seed), place, depth, None);
                let what = format!("{place:?} depth {depth} {defect:?}");
                assert!(
                    !structurally_valid(&bad),
                    "{what}: prost accepts the broken one"
                );
                assert!(structurally_valid(&good), "{what}: prost rejects the twin");
                assert_eq!(host_walk(&bad), Err(Error::Malformed), "{what}: walker");
                assert_eq!(host_walk(&good), Ok(()), "{what}: walker on the twin");
            }
        }
    }
    assert!(!structurally_valid(&unhex(ISSUE_REQUEST)));
    assert_eq!(host_walk(&unhex(ISSUE_REQUEST)), Err(Error::Malformed));
}

/// Random mutations (byte changes, insertions, deletions, truncations) of requests full of
/// nested values: whenever prost rejects the result, so does the walker, and (for these seeds)
/// the other way round. (The walker may refuse more than prost in one documented case, group
/// wire types in unknown fields, which prost skips; no mutation here makes one.)
#[test]
fn walker_never_accepts_what_prost_rejects() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x9e5);
    let (mut rejected, mut accepted, mut stricter) = (0, 0, 0);
    for _ in 0..40_000 {
        let place = PLACES[rng.random_range(0..PLACES.len())];
        let depth = rng.random_range(0..5);
        let mut body = request(&mut rng, place, depth, None);
        for _ in 0..if rng.random_bool(0.8) { 1 } else { 3 } {
            if body.is_empty() {
                break;
            }
            let i = rng.random_range(0..body.len());
            match rng.random_range(0..4) {
                0 => body[i] = rng.random(),
                1 => body.insert(i, rng.random()),
                2 => {
                    body.remove(i);
                }
                _ => body.truncate(i.max(1)),
            }
        }
        let oracle = structurally_valid(&body);
        let walker = host_walk(&body);
        if !oracle {
            rejected += 1;
            assert!(
                walker.is_err(),
                "the walker accepts what prost rejects: {}",
                hex(&body)
            );
        } else if walker.is_ok() {
            accepted += 1;
        } else {
            stricter += 1;
            println!("only dt refuses ({walker:?}): {}", hex(&body));
        }
    }
    println!(
        "mutations: prost rejects {rejected}, both accept {accepted}, only dt refuses {stricter}"
    );
    assert!(
        rejected > 1000 && accepted > 1000,
        "the mutations exercise both sides"
    );
    assert_eq!(stricter, 0, "the walker refused requests prost accepts");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The issue's request and the generated family, through the kernel: each arrives byte for
/// byte, counted `malformed`, with no record dropped; then a valid request on the same
/// connection is still filtered.
#[test]
fn nested_defects_pass_through_the_kernel_byte_for_byte() {
    if !kernel_or_skip("nested_defects_pass_through_the_kernel_byte_for_byte") {
        return;
    }
    let rules = TempRules::with_files(&[("r.toml", RULES)]);
    let receiver = Receiver::start_v4();
    let agent = start_agent(&rules, &[receiver.port()]);
    let mut bodies = vec![unhex(ISSUE_REQUEST)];
    let mut rng = ChaCha8Rng::seed_from_u64(0xbad);
    for place in PLACES {
        for depth in 1..=6 {
            for defect in DEFECTS {
                bodies.push(request(&mut rng, place, depth, Some(defect)));
            }
        }
    }
    let good = request(&mut rng, Place::Body, 3, None);
    let mut client = RawClient::connect(receiver.addr());
    for body in &bodies {
        let req = HttpRequestBuilder::logs(body.clone()).build();
        client.roundtrip(&req, &Split::Whole);
    }
    let req = HttpRequestBuilder::logs(good.clone()).build();
    client.roundtrip(&req, &Split::head_then_body(3));
    client.finish();
    let got = receiver.wait_for(bodies.len() + 1, WAIT);
    for (i, (sent, arrived)) in bodies.iter().zip(&got).enumerate() {
        assert!(
            sent == &arrived.body,
            "request {i} was changed: sent {}, arrived {}",
            hex(sent),
            hex(&arrived.body)
        );
    }
    let last = &got[bodies.len()];
    assert_eq!(
        last.records().len(),
        1,
        "the valid request after them had its DEBUG record dropped"
    );
    let stats = stats_of(&agent);
    assert_eq!(
        stats.totals.passthrough.get("malformed"),
        Some(&(bodies.len() as u64))
    );
    let r = stats.rule("drop-debug").expect("rule listed");
    assert_eq!(
        (r.matched, r.dropped),
        (1, 1),
        "only the valid request's DEBUG record"
    );
}
