//! The checked-in C header `include/lifeboat.h` is what cbindgen generates from
//! `src/c_api.rs` today. After changing the C API, regenerate it with
//! `LIFEBOAT_BLESS=1 cargo test -p lifeboat-edge-ffi --test header` and commit it.

use std::path::Path;

#[test]
fn checked_in_c_header_matches_the_c_api() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .map_err(|e| anyhow::anyhow!("cbindgen.toml: {e}"))?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/c_api.rs"))
        .generate()?;
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = dir.join("include/lifeboat.h");
    if std::env::var_os("LIFEBOAT_BLESS").is_some() {
        std::fs::write(&path, &generated)?;
        return Ok(());
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    anyhow::ensure!(
        checked_in == generated,
        "{} is out of date with src/c_api.rs; regenerate it with \
         `LIFEBOAT_BLESS=1 cargo test -p lifeboat-edge-ffi --test header` and commit it",
        path.display()
    );
    Ok(())
}
