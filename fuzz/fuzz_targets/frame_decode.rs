//! cargo-fuzz target: `frame_bytes` from `common/tests/support/fuzz_targets.rs` (shared with the
//! stable property tests and fuzz loop in `common/tests/hostile_input.rs`).
#![no_main]

#[path = "../../common/tests/support/fuzz_targets.rs"]
mod fuzz_targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = fuzz_targets::frame_bytes(data);
});
