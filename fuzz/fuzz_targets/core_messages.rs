//! cargo-fuzz target: `core_script` from `lifeboat_testkit::fuzz_targets` (shared with the stable
//! property tests and fuzz loop in `common/tests/hostile_input.rs`).
#![no_main]

use lifeboat_testkit::fuzz_targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fuzz_targets::core_script(data);
});
