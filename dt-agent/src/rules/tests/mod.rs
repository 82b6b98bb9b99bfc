//! Tests of the rules pipeline as a whole: loading, compiling, and walking OTLP requests with
//! the compiled rules. Module-local unit tests live next to their code.

mod compile;
mod load;
mod objects;
mod probe;

use std::path::PathBuf;

use super::{Compiled, Diagnostic, RuleDef, SlotTable, load_sources};

/// A small deterministic PRNG (xorshift64*), so random tests need no extra crate and replay.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// One of `items` (non-empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// `len` bytes drawn from `alphabet`.
    pub fn string(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
        (0..len).map(|_| self.pick(alphabet)).collect()
    }
}

/// The file name every single-file test uses.
const FILE: &str = "r.toml";

/// Loads one in-memory rule file named [`FILE`].
fn load(text: &str) -> Result<Vec<RuleDef>, Vec<Diagnostic>> {
    load_sources(&[(PathBuf::from(FILE), text.to_string())]).map(|set| set.rules)
}

/// Loads and compiles one in-memory rule file with a fresh slot table.
fn build(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let set = load_sources(&[(PathBuf::from(FILE), text.to_string())])?;
    super::compile(&set, &mut SlotTable::new())
}

/// The diagnostics (displayed) of loading and compiling `text`, which must fail.
fn errors(text: &str) -> Vec<String> {
    match build(text) {
        Ok(compiled) => panic!("expected errors, compiled {compiled:?}\n{text}"),
        Err(diags) => diags.iter().map(ToString::to_string).collect(),
    }
}

/// The single diagnostic of `text`, displayed.
fn error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// A `[[rule]]` with just a name and an action.
fn rule(name: &str, action: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\naction = \"{action}\"\n")
}

/// Names in expected values (`action: "drop".into()`): the action of a known name.
impl From<&str> for super::ActionKind {
    fn from(name: &str) -> super::ActionKind {
        super::ActionKind::from_name(name).unwrap_or_else(|| panic!("no action is named {name:?}"))
    }
}

/// Names in expected values (`hook: "otlp".into()`): the hook of a name as rule files write it.
impl From<&str> for super::Hook {
    fn from(name: &str) -> super::Hook {
        match name.strip_prefix("uprobe:") {
            Some(probe) => super::Hook::Uprobe(probe.to_string()),
            None if name == "otlp" => super::Hook::Otlp,
            None => panic!("no hook is named {name:?}"),
        }
    }
}

impl super::Hook {
    /// The hook's name as a `&str`, for comparing with names in expected values (leaked: tests
    /// only).
    pub fn as_str(&self) -> &'static str {
        Box::leak(self.name().into_boxed_str())
    }
}
