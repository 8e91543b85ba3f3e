//! The `lifeboat-server` command line, run as a user would. (Building this test also makes
//! `cargo test --workspace` rebuild the binary that the end-to-end tests start.)

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lifeboat-server"))
}

#[test]
fn init_creates_a_region_and_credentials_verify() {
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("region");
    let out = bin()
        .args(["init", "--region"])
        .arg(&region)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["keyring", "ca.pem", "server.pem", "server.key"] {
        assert!(region.join(f).exists(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(region.join("keyring"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keyring readable by others: {mode:o}");
    }
    let out = bin()
        .args(["credential", "--device", "42", "--region"])
        .arg(&region)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().len(), 64);
    let keyring = lifeboat_common::keyring::Keyring::load(&region.join("keyring")).unwrap();
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&token.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(keyring.verify_device(lifeboat_common::DeviceId(42), &bytes));
    assert!(!keyring.verify_device(lifeboat_common::DeviceId(43), &bytes));
}

#[test]
fn keys_rotate_and_refuse_to_retire_the_active_key() {
    let dir = tempfile::tempdir().unwrap();
    let region = dir.path().join("region");
    assert!(bin()
        .args(["init", "--region"])
        .arg(&region)
        .status()
        .unwrap()
        .success());
    let out = bin()
        .args(["keys", "--region"])
        .arg(&region)
        .arg("rotate")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("key 2 (active)"));
    let out = bin()
        .args(["keys", "--region"])
        .arg(&region)
        .args(["retire", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "retiring the active key must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("active"));
}

#[test]
fn missing_region_without_create_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-create-region",
            "--region",
        ])
        .arg(dir.path().join("nope"))
        .arg("--data-dir")
        .arg(dir.path().join("dc"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyring"));
}
