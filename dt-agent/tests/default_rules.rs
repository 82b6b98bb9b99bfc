//! The shipped default rule set (`rules/`) is valid, checked through the binary as a user would.
//! (This also makes `cargo test --workspace` build the `dt-agent` binary that the integration
//! tests in `tests/` drive.)

use std::process::Command;

#[test]
fn default_rules_check_clean() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules");
    let out = Command::new(env!("CARGO_BIN_EXE_dt-agent"))
        .args(["check", rules])
        .output()
        .expect("running dt-agent check");
    assert!(
        out.status.success(),
        "dt-agent check {rules} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}
