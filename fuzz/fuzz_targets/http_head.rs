//! The `http_head` check of `dt_tests::fuzz_checks` (see there what it checks).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dt_tests::fuzz_checks::http_head(data));
