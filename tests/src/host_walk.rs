//! The host walker both ways: every record field by field, and records of the usual shape
//! taken whole (the fast path the kernel takes). The two must agree on everything: the
//! verdict, every counter, the plan and the edited bytes.

use dt_agent::rules::{Compiled, HostEnv, SlotTable, compile, load_sources};
use dt_ebpf_common::walk::{
    Editor, MAX_APPLY_STEPS, Walk, apply_start, apply_step, prepare_enrich, run,
};
use dt_ebpf_common::wire::SliceSource;
use dt_ebpf_common::{EnrichStr, GV_BOOL, GV_INT, GV_LEVEL, GV_STRING, GroupNote};

/// Applies a walk's plan to a copy of the request bytes.
pub struct VecEditor(pub Vec<u8>);

impl Editor for VecEditor {
    fn pop(&mut self, off: u32, len: u32) -> bool {
        let (off, len) = (off as usize, len as usize);
        self.0.drain(off..off + len);
        true
    }

    fn reach(&mut self, off: u32, len: u32) -> bool {
        (off as usize + len as usize) <= self.0.len()
    }

    fn put(&mut self, off: u32, b: u8) {
        self.0[off as usize] = b;
    }

    fn push(&mut self, off: u32, len: u32) -> bool {
        let off = off as usize;
        if off > self.0.len() {
            return false;
        }
        // Any bytes: the walk writes them next (0xee shows one it did not).
        self.0
            .splice(off..off, std::iter::repeat_n(0xee, len as usize));
        true
    }
}

/// What one walk of a body came to.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: String,
    pub records: u32,
    pub records_dropped: u32,
    /// Per rule: matched, dropped, kept, redacted, dropped bytes.
    pub acc: Vec<(u32, u32, u32, u32, u64)>,
    /// The edited bytes (the body unchanged when the walk failed).
    pub edited: Vec<u8>,
    /// The grouped matches noted (rule index, value kind, value bytes), when the walk
    /// succeeded.
    pub groups: Vec<(u8, u8, Vec<u8>)>,
}

/// A group note's value, read from the request as the kernel reads it when the request
/// commits (uncut: the cut is the kernel's key).
fn note_value(body: &[u8], n: &GroupNote) -> (u8, u8, Vec<u8>) {
    let bytes = match n.kind {
        GV_STRING => body[n.a as usize..(n.a + n.b) as usize].to_vec(),
        GV_INT => ((n.b as u64) << 32 | n.a as u64).to_le_bytes().to_vec(),
        GV_BOOL | GV_LEVEL => vec![n.a as u8],
        _ => Vec::new(),
    };
    (n.rule, n.kind, bytes)
}

/// The `[enrich]` values the host walk adds: this process's pid and the host's name, as the
/// kernel would for a request this process sends (no container).
pub fn enrich_values() -> (u32, EnrichStr) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (
        std::process::id(),
        EnrichStr::of(host.trim_end().as_bytes()),
    )
}

/// Walks `body` (a protobuf request) under `compiled`, with the fast path on (`fast`) or off;
/// also returns the steps taken and the records taken whole.
pub fn walk_body(compiled: &Compiled, body: &[u8], fast: bool) -> (Outcome, u32, u32) {
    // SAFETY: `Walk` is plain old data (integers and arrays of them); all zeroes is valid.
    let mut walk = Box::new(unsafe { std::mem::zeroed::<Walk>() });
    walk.start(0, body.len() as u32, 0, 0);
    walk.fast = fast as u32;
    if compiled.ruleset.enrich != 0 {
        let (pid, host) = enrich_values();
        prepare_enrich(&mut walk, compiled.ruleset.enrich, pid, Some(&host), None);
    }
    let mut env = HostEnv::new(compiled);
    let r = run(&mut walk, &mut SliceSource(body), &mut env);
    let mut editor = VecEditor(body.to_vec());
    if r.is_ok() {
        apply_start(&mut walk);
        // As many calls as the kernel's `bpf_loop` allows, and no more: a plan that needs more
        // would leave the kernel's request half edited.
        let mut calls = 1;
        while apply_step(&mut walk, &mut editor) {
            calls += 1;
            assert!(
                calls <= MAX_APPLY_STEPS,
                "the apply plan needs more than the kernel's {MAX_APPLY_STEPS} steps"
            );
        }
    }
    let n = compiled.ruleset.n_rules as usize;
    let outcome = Outcome {
        verdict: format!("{r:?}"),
        records: walk.records,
        records_dropped: walk.records_dropped,
        acc: walk.acc[..n]
            .iter()
            .map(|a| (a.matched, a.dropped, a.kept, a.redacted, a.dropped_bytes))
            .collect(),
        edited: editor.0,
        groups: if r.is_ok() {
            env.notes.iter().map(|n| note_value(body, n)).collect()
        } else {
            Vec::new()
        },
    };
    (outcome, walk.steps, walk.fast_records)
}

/// Compiles one rule file's text.
pub fn compile_rules(toml: &str) -> Compiled {
    let defs = load_sources(&[("rules.toml".into(), toml.to_string())]).expect("rules load");
    compile(&defs, &mut SlotTable::new()).expect("rules compile")
}

/// Walks `body` both ways and says how they differ, if they do. Returns the steps each way
/// (field by field, fast) and the records the fast way took whole.
pub fn both_ways(compiled: &Compiled, body: &[u8]) -> Result<(u32, u32, u32), String> {
    let (slow, slow_steps, _) = walk_body(compiled, body, false);
    let (fast, fast_steps, whole) = walk_body(compiled, body, true);
    if slow == fast {
        return Ok((slow_steps, fast_steps, whole));
    }
    let brief = |o: &Outcome| {
        format!(
            "{} records {} dropped {} acc {:?} groups {:?}",
            o.verdict, o.records, o.records_dropped, o.acc, o.groups
        )
    };
    Err(format!(
        "the fast path and the field walk disagree:\n  field by field: {}\n  fast:           {}\n  edited bytes {}",
        brief(&slow),
        brief(&fast),
        if slow.edited == fast.edited {
            "the same"
        } else {
            "differ"
        }
    ))
}
