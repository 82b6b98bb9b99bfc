//! The `rules_parse` check of `dt_tests::fuzz_checks` (see there what it checks).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dt_tests::fuzz_checks::rules_parse(data));
