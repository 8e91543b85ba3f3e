//! Key rotation during traffic (S14), end to end: `lifeboat-server keys add`, `activate`,
//! `rotate`, `retire` and `revoke` run against the region directory of a running datacenter process, which
//! picks up the file without a restart (by polling it, or at once on SIGHUP). Old digests
//! still open after a rotation; new seals use the new key; a retired key's digests get a
//! typed refusal; a broken keyring file never replaces the keys in use. Honest traffic (real
//! edge clients) keeps committing throughout.

use anyhow::{ensure, Context};
use lifeboat_common::wire::{OpOutcome, UploadOutcome, UploadRefusal};
use lifeboat_common::{SessionId, TripOp};
use lifeboat_server::region::Region;
use lifeboat_tests::arena::Arena;
use lifeboat_tests::{route_point, server_binary, PICKUP};

/// Run `lifeboat-server keys --region <region> <action...>`.
fn keys(arena: &Arena, action: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(server_binary()?)
        .arg("keys")
        .arg("--region")
        .arg(&arena.cluster.region_dir)
        .args(action)
        .output()?;
    ensure!(
        out.status.success(),
        "keys {action:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn request() -> TripOp {
    TripOp::Request {
        pickup: PICKUP,
        dropoff: route_point(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_during_traffic_keeps_old_digests_open() -> anyhow::Result<()> {
    let arena = Arena::start(&["--keyring-poll-ms", "200"]).await?;
    let h = arena.raw(300)?;
    let (mut c, _) = h.hello(false, vec![]).await?;
    let (o, u) = c.submit(SessionId(3001), 1, request()).await?;
    ensure!(o == OpOutcome::Applied);
    let old = u.context("no digest")?.digest;
    assert_eq!(old.key_id, 1);
    drop(c);

    // Phase 1: the new key opens everywhere before anything is sealed with it.
    let listed = keys(&arena, &["add"])?;
    assert!(listed.contains("key 2\n"), "{listed}");
    arena.wait_stat("/keyring/reloads", 1).await?;
    assert_eq!(
        arena.stats()?["keyring"]["key_ids"],
        serde_json::json!([1, 2])
    );
    assert_eq!(arena.stat("/keyring/active_key")?, 1);
    // Phase 2: seal with it.
    let listed = keys(&arena, &["activate", "2"])?;
    assert!(listed.contains("key 2 (active)"), "{listed}");
    arena.wait_stat("/keyring/active_key", 2).await?;
    // Honest traffic rode through, and its trip is now sealed with the new key.
    arena.honest_progress(5).await?;
    arena
        .wait_stat("/keyring/active_sessions_by_key/2", 1)
        .await?;

    // The old digest still opens (the datacenter's copy is that very version).
    let (mut c, results) = h.hello(false, vec![old.clone()]).await?;
    assert_eq!(results[0].outcome, UploadOutcome::Current);
    // New seals use the new key.
    let (o, u) = c.submit(SessionId(3002), 1, request()).await?;
    ensure!(o == OpOutcome::Applied);
    assert_eq!(u.context("no digest")?.digest.key_id, 2);
    drop(c);

    // Retire key 1: its digests now get a typed refusal, and nothing else changes.
    keys(&arena, &["retire", "1"])?;
    arena.wait_stat("/keyring/reloads", 3).await?;
    let (_c, results) = h.hello(false, vec![old]).await?;
    assert_eq!(
        results[0].outcome,
        UploadOutcome::Refused(UploadRefusal::UnknownKey(1))
    );
    let status = arena.stats()?;
    assert_eq!(status["keyring"]["key_ids"], serde_json::json!([2]));
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_keyring_and_a_broken_file_is_not_used() -> anyhow::Result<()> {
    use nix::sys::signal::{kill, Signal};
    let mut arena = Arena::start(&["--keyring-poll-ms", "0"]).await?;
    let pid = arena.cluster.process(0).context("not running")?.pid();
    keys(&arena, &["rotate"])?;
    // Polling is off: nothing changes until the signal.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(arena.stat("/keyring/active_key")?, 1);
    kill(pid, Signal::SIGHUP)?;
    arena.wait_stat("/keyring/active_key", 2).await?;

    // A keyring others can read is refused; the datacenter keeps its keys and says why.
    let path = Region::keyring_path(&arena.cluster.region_dir);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    kill(pid, Signal::SIGHUP)?;
    arena.wait_stat("/keyring/reload_errors", 1).await?;
    let status = arena.stats()?;
    let why = status["keyring"]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("chmod 600"), "{why}");
    assert_eq!(status["keyring"]["active_key"], 2);
    // Honest devices were never affected.
    arena.honest_progress(5).await?;
    arena.assert_alive()?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_device_is_revoked_without_a_restart() -> anyhow::Result<()> {
    let arena = Arena::start(&["--keyring-poll-ms", "200"]).await?;
    let stolen = arena.raw(310)?;
    let (c, _) = stolen.hello(false, vec![]).await?;
    let listed = keys(&arena, &["revoke", "--device", "310"])?;
    assert!(listed.contains("revoked device 310"), "{listed}");
    // Its open connection is closed on the next keyring check...
    let reason = c.closed(std::time::Duration::from_secs(5)).await?;
    println!("revoked device's connection closed: {reason}");
    // ...and it cannot connect again, while everyone else carries on.
    let (_c, first) = stolen
        .hello_as(stolen.device, stolen.token, false, vec![])
        .await?;
    assert!(
        matches!(
            first,
            lifeboat_tests::raw::Msg::Error {
                error: lifeboat_common::wire::ProtocolError::BadCredential
            }
        ),
        "{first:?}"
    );
    arena.wait_stat("/bad_credentials", 1).await?;
    arena.finish().await
}
