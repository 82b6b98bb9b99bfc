//! Random OTLP/HTTP log requests and random rule sets for the property test
//! (`tests/property.rs`), with an independent reference for what dt must make of them.
//!
//! - [`wire`]: a hand-written protobuf encoder over a field tree, so requests can hold what real
//!   encoders write (any field order, repeated singular fields, unknown fields of every wire
//!   type, padded varints) and, re-emitted with edits, give the exact bytes dt must send on.
//! - [`logs`]: random ExportLogsServiceRequests, malformed variants, HTTP heads and splits.
//! - [`rules`]: random rule sets (count, drop, and, behind a switch, sample and redact) as
//!   [`crate::model::RuleSpec`]s, which render themselves to TOML and match records (no dt code):
//!   severity, service, event_name, body_contains, string and typed attribute conditions, and
//!   count rules with `group_by`; random `[enrich]` tables ([`crate::model::EnrichSpec`]).
//! - [`reference`]: says whether dt must pass a request through and why (the oracle,
//!   [`crate::oracle`], for malformed; groups and dt's depth bound besides), else decodes it with
//!   prost (protobuf merge semantics) and applies the rules with [`crate::model`], giving the
//!   decoded request, the bytes, the counters and the `group_by` groups dt must produce; with
//!   an `[enrich]` table, the resource field dt inserts at the end of each ResourceLogs that
//!   lacks some of its attributes (or that the request passes through `enrich`).
//! - [`round`]: one rule set (sometimes with `[enrich]`) and the connections of requests sent
//!   under it.
//!
//! Nothing here calls dt's walker (`dt_ebpf_common::walk`) or rule compiler.

pub mod logs;
pub mod reference;
pub mod round;
pub mod rules;
pub mod wire;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resource `service.name` values. Near-duplicates on purpose: equality must be exact.
pub const SERVICES: &[&str] = &[
    "checkout",
    "frontend",
    "cart",
    "payment-service",
    "checkout2",
    "Checkout",
    "svc é",
    "a",
    // The longest service a rule may name (128 bytes).
    "service-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

/// Record attribute keys, each with the string values it usually takes. A record attribute
/// named `service.name` is there on purpose: it is not the resource's service.
pub const ATTRS: &[(&str, &[&str])] = &[
    (
        "http.route",
        &["/healthz", "/api/v1/orders", "/healthz2", "/Healthz"],
    ),
    ("user.email", &["alice@example.com", "bob@example.com", ""]),
    ("k", &["v", "", "w"]),
    ("http.method", &["GET", "POST"]),
    ("service.name", &["checkout", "frontend"]),
    ("secret.token", &["s3cr3t", ""]),
    ("kk", &["v"]),
    ("x", &["/healthz", "GET"]),
    // The longest key and value a rule may name (64 and 128 bytes).
    (
        "long.key.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
        &[
            "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
            "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
        ],
    ),
];

/// The attribute keys.
pub const ATTR_KEYS: &[&str] = &[
    "http.route",
    "user.email",
    "k",
    "http.method",
    "service.name",
    "secret.token",
    "kk",
    "x",
    "long.key.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
];

/// Every attribute value, for strings anywhere.
pub const ATTR_VALUES: &[&str] = &[
    "/healthz",
    "/api/v1/orders",
    "alice@example.com",
    "",
    "GET",
    "v",
    "/healthz2",
    "/Healthz",
    "s3cr3t",
];

/// Record attribute keys that take int values, with the values rules name. Some are keys of
/// [`ATTRS`] (string values) and [`BOOL_KEYS`]: a typed condition must tell the types apart.
pub const INT_ATTRS: &[(&str, &[i64])] = &[
    ("http.status_code", &[200, 503, 404, 0, 1, -1]),
    (
        "retry.count",
        &[0, 1, 2, -5, 1 << 40, i64::MAX, i64::MIN, -9_000_000_000],
    ),
    ("k", &[1, 0, 503, -1]),
    ("http.route", &[503, 1]),
];

/// Record attribute keys that take bool values (some also ints or strings elsewhere).
pub const BOOL_KEYS: &[&str] = &["retry", "sampled", "k", "http.status_code"];

/// Strings that read like the typed values (never equal to them), under the typed keys.
pub const TYPED_LOOKALIKES: &[&str] = &["503", "1", "0", "true", "false", "-1", "200"];

/// `event_name` values rules name (1..=128 bytes): near-duplicates, multi-byte, one exactly
/// 64 bytes (a group value shown whole), one of 72 bytes (shown cut at 64 bytes, inside a
/// character), the longest a rule may name (128 bytes; a group value cut too).
pub const EVENT_NAMES: &[&str] = &[
    "payment.failed",
    "payment.failed2",
    "Payment.failed",
    "payment",
    "login",
    "日本",
    "x234567890123456789012345678901234567890123456789012345678901234",
    "日本日本日本日本日本日本日本日本日本日本日本日本",
    "event-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
];

/// `group_by` values the generator uses: every dimension, attributes of string, int and bool
/// values (and of mixed ones), and the longest key.
pub const GROUP_DIMS: &[&str] = &[
    "service",
    "severity",
    "event_name",
    "attributes.http.route",
    "attributes.k",
    "attributes.http.status_code",
    "attributes.retry",
    "attributes.user.email",
    "attributes.retry.count",
    "attributes.long.key.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
];

/// `body_contains` needles: overlapping, prefixes and suffixes of each other, multi-byte UTF-8,
/// one longer than a 64-byte scan chunk.
pub const NEEDLES: &[&str] = &[
    "healthcheck",
    "check",
    "health",
    "secret",
    "é",
    "日本",
    "ERROR",
    "error",
    "aaa",
    "ab",
    "the quick brown fox jumps over the lazy dog and keeps on running far away",
    // The longest needle a rule may use (128 bytes).
    "needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-needle-n!",
];

/// Words bodies are made of, besides the needles.
pub const BODY_WORDS: &[&str] = &[
    "hello",
    " ",
    "world",
    "GET /healthz",
    "ok",
    "a",
    "b",
    "日本語",
    "healthchec",
    "ealthcheck",
    "aa",
    "the quick brown fox",
    "Secret",
    "0123456789",
    "\n",
    "\"quoted\"",
];

/// A seeded random source with the few helpers the generators use.
pub struct G {
    pub rng: Box<dyn RngCore>,
    /// Share of strings given invalid UTF-8 in the request being generated (0 in most
    /// requests: the receiver cannot decode one that still holds some when it arrives).
    pub bad_utf8: f64,
}

impl G {
    pub fn new(seed: u64) -> G {
        G {
            rng: Box::new(ChaCha8Rng::seed_from_u64(seed)),
            bad_utf8: 0.0,
        }
    }

    /// Decisions drawn from `data` (a fuzzer's input), then, once it is used up, from a seed
    /// made of it: a mutated input changes the decisions its changed bytes feed.
    pub fn from_bytes(data: &[u8]) -> G {
        G {
            rng: Box::new(ByteRng::new(data)),
            bad_utf8: 0.0,
        }
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.rng.random_range(lo..=hi)
    }

    pub fn u64(&mut self) -> u64 {
        self.rng.random()
    }

    pub fn u32(&mut self) -> u32 {
        self.rng.random()
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.rng.random_range(0..xs.len())]
    }

    /// An index into `weights`, chosen with those weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = self.rng.random_range(0..total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        v.shuffle(&mut *self.rng);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random()).collect()
    }
}

/// Random bits from a byte string, then from a ChaCha stream seeded with its hash.
struct ByteRng {
    data: Vec<u8>,
    pos: usize,
    rest: ChaCha8Rng,
}

impl ByteRng {
    fn new(data: &[u8]) -> ByteRng {
        let seed = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
        });
        ByteRng {
            data: data.to_vec(),
            pos: 0,
            rest: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl RngCore for ByteRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        let n = dst.len().min(self.data.len() - self.pos);
        dst[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        self.rest.fill_bytes(&mut dst[n..]);
    }
}

/// A well-mixed 64-bit value from two (splitmix64 of their combination): round seeds from the
/// run seed.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
