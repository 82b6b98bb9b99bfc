//! The kernel's verifier checks at most 1,000,000 instructions of a program (all its paths, its
//! callbacks and global functions together); past that, the program does not load and dt does
//! not run. This test loads the agent on the default rule set and says how much of that budget
//! the sk_msg program takes, and fails well before the limit, so that a change that costs the
//! verifier a lot is seen when it is made, not when the next one tips it over.

use dt_tests::{TempRules, kernel_or_skip, start_agent};

/// The most the sk_msg program may take: a margin under the kernel's limit.
const BUDGET: u32 = 900_000;
const LIMIT: u32 = 1_000_000;

#[test]
fn the_sk_msg_program_verifies_well_within_the_kernels_limit() {
    if !kernel_or_skip("the_sk_msg_program_verifies_well_within_the_kernels_limit") {
        return;
    }
    let rules_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules");
    let dir = TempRules::new();
    for entry in std::fs::read_dir(rules_dir).expect("read rules/") {
        let path = entry.expect("rules/ entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read a rule file");
            dir.write(&path.file_name().unwrap().to_string_lossy(), &text);
        }
    }
    let _agent = start_agent(&dir, &[4318]);
    // The newest dt_msg is this agent's (test binaries run one at a time).
    let newest = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("dt_msg"))
        .max_by_key(|p| p.id())
        .expect("the agent's sk_msg program is loaded");
    let verified = newest
        .verified_instruction_count()
        .expect("the kernel reports the instructions it verified");
    println!(
        "dt_msg: the verifier checked {verified} instructions ({:.1}% of the kernel's {LIMIT})",
        verified as f64 * 100.0 / LIMIT as f64
    );
    assert!(
        verified <= BUDGET,
        "dt_msg took {verified} instructions of the verifier's {LIMIT}: more than the {BUDGET} \
         this project allows itself. Move heavy loops into global BPF functions (see README, \
         \"What dt checks\") before adding more."
    );
}
