//! The UniFFI binding generator, pinned to the uniffi version this crate is built with.
//!
//! ```text
//! cargo build -p lifeboat-edge-ffi
//! cargo run -p lifeboat-edge-ffi --bin uniffi-bindgen -- generate \
//!     --library target/debug/liblifeboat_edge_ffi.so --language python --out-dir out/python
//! ```
//! `--language kotlin` and `--language swift` generate the other bindings the same way.

fn main() {
    uniffi::uniffi_bindgen_main()
}
