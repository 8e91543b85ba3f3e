//! Hostile devices against a real `lifeboat-server` process (S11, C4, C6): a raw QUIC client
//! that speaks the wire format by hand sends tampered, foreign and replayed digests, forged
//! ids, garbage, truncated, oversized and slow frames, floods of connections, ops and
//! creates.
//!
//! Every scenario checks four things: the attacker gets the right typed error (an `Error`
//! frame, a typed upload refusal or op rejection) or a QUIC-level refusal; the datacenter
//! counts it in its status JSON; the datacenter process is alive and never panicked, with
//! bounded memory where the attack is about memory; and an honest rider and driver (real
//! edge clients, see `lifeboat_tests::arena`) keep committing ops throughout.

use anyhow::{bail, ensure, Context};
use lifeboat_common::codec::encode;
use lifeboat_common::digest::SealedDigest;
use lifeboat_common::limits::{LimitExceeded, LimitKind};
use lifeboat_common::wire::{
    ClientMsg, OfferedCopy, OpOutcome, OpRejection, ProtocolError, UploadOutcome, UploadRefusal,
};
use lifeboat_common::{DeviceId, SessionId, Trip, TripOp};
use lifeboat_tests::arena::{Arena, HONEST_RIDER};
use lifeboat_tests::raw::{RawConn, RawDevice};
use lifeboat_tests::{route_point, PICKUP};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Short timeouts so the slow-sender scenarios stay fast.
/// A silent connection (handshake done, no stream) is a device's standby path; here it may
/// wait as long as the handshake timeout, so the silent-connection bounds below stay short.
const ARGS: &[&str] = &[
    "--handshake-timeout-ms",
    "1500",
    "--standby-timeout-ms",
    "1500",
    "--frame-timeout-ms",
    "500",
];

/// Memory an attack may add to the datacenter (KiB). It catches allocations sized by what a
/// peer claims (gigabytes) or state kept per attack, not allocator noise; the datacenter
/// starts at about 10 MiB.
const RSS_GROWTH_MAX_KIB: u64 = 32 * 1024;

fn request() -> TripOp {
    TripOp::Request {
        pickup: PICKUP,
        dropoff: route_point(10),
    }
}

/// The attacker's own trip, created by hand: its connection and first digest.
async fn own_trip(
    dev: &RawDevice,
    session: u64,
) -> anyhow::Result<(RawConn, SessionId, SealedDigest)> {
    let (mut c, _) = dev.hello(false, vec![]).await?;
    let s = SessionId(session);
    let (outcome, update) = c.submit(s, 1, request()).await?;
    ensure!(outcome == OpOutcome::Applied, "create: {outcome:?}");
    let digest = update.context("no digest with the create")?.digest;
    Ok((c, s, digest))
}

fn outcomes(results: &[lifeboat_common::wire::UploadResult]) -> Vec<UploadOutcome> {
    results.iter().map(|r| r.outcome.clone()).collect()
}

fn frame_with_len(len: u32, body: &[u8]) -> Vec<u8> {
    let mut f = len.to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_digest_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let arena = Arena::start(ARGS).await?;
    let h = arena.raw(100)?;
    let (_c, session, genuine) = own_trip(&h, 1001).await?;

    let mut flipped_ciphertext = genuine.clone();
    flipped_ciphertext.ciphertext[0] ^= 0x01;
    let mut newer_header = genuine.clone();
    newer_header
        .header
        .version
        .bump(lifeboat_common::ids::ReplicaId(7))?;
    let mut tombstoned_header = genuine.clone();
    tombstoned_header.header.tombstone = true;
    let mut flipped_nonce = genuine.clone();
    flipped_nonce.nonce[3] ^= 0x80;
    let mut unknown_key = genuine.clone();
    unknown_key.key_id = 99;

    let before = arena.honest_commits();
    let (_c2, results) = h
        .hello(
            false,
            vec![
                flipped_ciphertext,
                newer_header,
                tombstoned_header,
                flipped_nonce,
                unknown_key,
                genuine.clone(),
            ],
        )
        .await?;
    let tampered = UploadOutcome::Refused(UploadRefusal::Tampered);
    assert_eq!(
        outcomes(&results),
        vec![
            tampered.clone(),
            tampered.clone(),
            tampered.clone(),
            tampered,
            UploadOutcome::Refused(UploadRefusal::UnknownKey(99)),
            // The datacenter's copy is exactly the genuine one: nothing was adopted.
            UploadOutcome::Current,
        ]
    );
    assert!(results.iter().all(|r| r.session == session));
    arena.wait_stat("/core/uploads_refused", 5).await?;
    ensure!(arena.honest_commits() >= before);
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_of_another_session_is_refused() -> anyhow::Result<()> {
    let arena = Arena::start(ARGS).await?;
    let attacker = arena.raw(110)?;
    let victim = arena.raw(111)?;
    let (_vc, victim_session, victim_digest) = own_trip(&victim, 1101).await?;
    let (_ac, _, own_digest) = own_trip(&attacker, 1102).await?;

    // A digest lifted from another phone, and the attacker's own digest relabelled.
    let mut relabelled = own_digest.clone();
    relabelled.header.session = victim_session;
    let (mut c, results) = attacker
        .hello(false, vec![victim_digest, relabelled])
        .await?;
    assert_eq!(
        outcomes(&results),
        vec![
            UploadOutcome::Refused(UploadRefusal::NotParticipant),
            UploadOutcome::Refused(UploadRefusal::Tampered),
        ]
    );
    // Nor can it act on the session it does not take part in.
    let (outcome, update) = c.submit(victim_session, 2, TripOp::Cancel).await?;
    assert_eq!(outcome, OpOutcome::Rejected(OpRejection::NotParticipant));
    assert!(
        update.is_none(),
        "a non-participant must not get the digest"
    );
    arena.wait_stat("/core/uploads_refused", 2).await?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_older_digest_cannot_roll_back_a_session() -> anyhow::Result<()> {
    let arena = Arena::start(ARGS).await?;
    let rider = arena.raw(120)?;
    let driver = arena.raw(121)?;
    // The attacker controls both phones of one trip (the honest driver is busy).
    let (mut d, _) = driver.hello(true, vec![]).await?;
    let (mut r, session, _) = own_trip(&rider, 1201).await?;
    let assigned = r.push_where(session, |g| g.header.driver.is_some()).await?;
    d.push_where(session, |g| g.header.driver.is_some()).await?;
    let (o, _) = d.submit(session, 1, TripOp::Arrived).await?;
    ensure!(o == OpOutcome::Applied, "arrived: {o:?}");
    drop(r);

    // Replay the older copy: the datacenter keeps its newer one and pushes it back.
    let (mut r, results) = rider.hello(false, vec![assigned.clone()]).await?;
    assert_eq!(outcomes(&results), vec![UploadOutcome::Stale]);
    let pushed = r
        .push_where(session, |g| g.header.version != assigned.header.version)
        .await?;
    assert_eq!(
        pushed.header.version.compare(&assigned.header.version),
        lifeboat_common::VersionOrder::Newer
    );
    arena.wait_stat("/core/uploads_stale", 1).await?;

    // Finish the trip (the fare is computed), then try to undo it with the old copy.
    for (seq, op) in (2..).zip([
        TripOp::StartTrip,
        TripOp::Location { at: route_point(3) },
        TripOp::Complete,
    ]) {
        let (o, _) = d.submit(session, seq, op).await?;
        ensure!(o == OpOutcome::Applied, "driver op {seq}: {o:?}");
    }
    drop(r);
    let (mut r, results) = rider.hello(false, vec![assigned]).await?;
    assert_eq!(outcomes(&results), vec![UploadOutcome::Tombstoned]);
    let tomb = r.push_where(session, |g| g.header.tombstone).await?;
    assert!(tomb.header.tombstone);
    // The driver's own old copy cannot revive it either.
    drop(d);
    let (_d, results) = driver.hello(false, vec![pushed]).await?;
    assert_eq!(outcomes(&results), vec![UploadOutcome::Tombstoned]);
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_device_id_is_refused() -> anyhow::Result<()> {
    let arena = Arena::start(ARGS).await?;
    let h = arena.raw(130)?;
    // Claiming the honest rider's id with the attacker's own credential.
    let (_c, first) = h
        .hello_as(DeviceId(HONEST_RIDER), h.token, false, vec![])
        .await?;
    assert!(
        matches!(
            first,
            lifeboat_tests::raw::Msg::Error {
                error: ProtocolError::BadCredential
            }
        ),
        "{first:?}"
    );
    // A body id that differs from the credential's device.
    let (_c, first) = h.hello_as(DeviceId(131), h.token, false, vec![]).await?;
    assert!(matches!(
        first,
        lifeboat_tests::raw::Msg::Error {
            error: ProtocolError::BadCredential
        }
    ));
    arena.wait_stat("/bad_credentials", 2).await?;

    // Once connected, the device id is the connection's: ops on the honest trip are refused.
    let (mut c, _) = h.hello(false, vec![]).await?;
    for (seq, op) in [
        TripOp::Location { at: route_point(1) },
        TripOp::Cancel,
        TripOp::Complete,
    ]
    .into_iter()
    .enumerate()
    {
        let (outcome, update) = c.submit(arena.honest_session, seq as u64 + 1, op).await?;
        assert_eq!(outcome, OpOutcome::Rejected(OpRejection::NotParticipant));
        assert!(update.is_none());
    }
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connect_is_refused() -> anyhow::Result<()> {
    let mut arena = Arena::start(ARGS).await?;
    let h = arena.raw(140)?;

    // No valid credential.
    let (_c, first) = h.hello_as(h.device, [0u8; 32], false, vec![]).await?;
    assert!(
        matches!(
            first,
            lifeboat_tests::raw::Msg::Error {
                error: ProtocolError::BadCredential
            }
        ),
        "{first:?}"
    );

    // No Hello at all: the first frame is an op.
    let mut c = h.open().await?;
    c.send(&ClientMsg::<Trip>::Submit {
        session: arena.honest_session,
        seq: 1,
        op: TripOp::Cancel,
    })
    .await?;
    assert_eq!(c.expect_error().await?, ProtocolError::ExpectedHello);

    // A Hello that promises more digests and never sends them: the handshake timeout.
    let mut c = h.open().await?;
    c.send(&ClientMsg::<Trip>::Hello {
        device: h.device,
        token: h.token,
        available: false,
        digests: vec![],
        more: true,
    })
    .await?;
    let t0 = Instant::now();
    let e = c.expect_error().await?;
    assert!(
        matches!(
            e,
            ProtocolError::Limit(LimitExceeded {
                kind: LimitKind::HandshakeTimeout,
                max: 1500
            })
        ),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));

    // Connected and silent: a standby that never says Hello, closed after the standby
    // timeout (1.5 s here), no stream ever opened.
    let silent = h.connect().await?;
    let reason = tokio::time::timeout(Duration::from_secs(5), silent.closed())
        .await
        .context("a silent connection was not closed")?;
    println!("silent connection closed: {reason}");

    arena.wait_stat("/bad_credentials", 1).await?;
    // The slow upload hit the handshake timeout; the silent standby's expiry is not a limit
    // hit (it was counted as one before standbys existed).
    arena.wait_stat("/limits/handshake_timeout", 1).await?;
    arena.assert_alive()?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_refused() -> anyhow::Result<()> {
    let arena = Arena::start(ARGS).await?;
    let h = arena.raw(150)?;
    let seed = 0x6a4b_a6e5;
    let mut rng = SmallRng::seed_from_u64(seed);
    let rounds = 12;
    for round in 0..rounds {
        let len = rng.random_range(1..300usize);
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half before Hello, half after Welcome.
        let mut c = if round % 2 == 0 {
            h.open().await?
        } else {
            h.hello(false, vec![]).await?.0
        };
        c.send_raw(&frame_with_len(len as u32, &body)).await?;
        let e = c
            .expect_error()
            .await
            .with_context(|| format!("seed {seed} round {round}"))?;
        assert!(
            matches!(e, ProtocolError::BadFrame(_) | ProtocolError::ExpectedHello),
            "seed {seed} round {round}: {e}"
        );
    }
    arena.wait_stat("/bad_frames", rounds).await?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_is_refused() -> anyhow::Result<()> {
    let arena = Arena::start(ARGS).await?;
    let h = arena.raw(160)?;
    let hello = lifeboat_common::codec::encode_frame(&ClientMsg::<Trip>::Hello {
        device: h.device,
        token: h.token,
        available: false,
        digests: vec![],
        more: false,
    })?;
    // A Hello cut short, then the stream ends.
    let mut c = h.open().await?;
    c.send_raw(&hello[..hello.len() - 5]).await?;
    c.send.finish()?;
    let e = c.expect_error().await.context("truncated Hello")?;
    assert!(matches!(e, ProtocolError::BadFrame(_)), "{e}");

    // After Welcome: a length prefix promising 100 bytes, 10 sent, stream ended.
    let (mut c, _) = h.hello(false, vec![]).await?;
    c.send_raw(&frame_with_len(100, &[7u8; 10])).await?;
    c.send.finish()?;
    let e = c
        .expect_error()
        .await
        .context("truncated frame after Welcome")?;
    assert!(matches!(e, ProtocolError::BadFrame(_)), "{e}");

    // Only part of a length prefix.
    let mut c = h.open().await?;
    c.send_raw(&[0, 0]).await?;
    c.send.finish()?;
    let e = c.expect_error().await.context("truncated length prefix")?;
    assert!(matches!(e, ProtocolError::BadFrame(_)), "{e}");
    arena.wait_stat("/bad_frames", 3).await?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_prefix_is_refused_before_allocation() -> anyhow::Result<()> {
    let mut args = ARGS.to_vec();
    args.extend(["--max-frame-bytes", "16384"]);
    let mut arena = Arena::start(&args).await?;
    let rss_before = arena.rss_kib()?;
    let h = arena.raw(170)?;
    let too_large = |e: &ProtocolError| {
        matches!(
            e,
            ProtocolError::Limit(LimitExceeded {
                kind: LimitKind::FrameBytes,
                max: 16384
            })
        )
    };
    for claim in [u32::MAX, 1 << 30, 65_537, 16_385] {
        let mut c = h.open().await?;
        c.send_raw(&claim.to_be_bytes()).await?;
        let e = c.expect_error().await?;
        assert!(too_large(&e), "claim {claim}: {e}");
    }
    // After Welcome, a real 20,000-byte frame.
    let (mut c, _) = h.hello(false, vec![]).await?;
    c.send_raw(&frame_with_len(20_000, &vec![0u8; 20_000]))
        .await?;
    let e = c.expect_error().await?;
    assert!(too_large(&e), "{e}");
    arena.wait_stat("/limits/frame_bytes", 5).await?;
    let rss_after = arena.rss_kib()?;
    println!("datacenter RSS {rss_before} KiB before, {rss_after} KiB after");
    ensure!(
        rss_after < rss_before + RSS_GROWTH_MAX_KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_claiming_a_huge_vector_is_refused() -> anyhow::Result<()> {
    let mut arena = Arena::start(ARGS).await?;
    let rss_before = arena.rss_kib()?;
    let h = arena.raw(180)?;
    // A Hello whose digest list claims u64::MAX entries: encode an empty Hello and replace
    // the empty list's length (0) and `more` (0) by a 9-byte varint of u64::MAX and `more`.
    let mut body = encode(&ClientMsg::<Trip>::Hello {
        device: h.device,
        token: h.token,
        available: false,
        digests: vec![],
        more: false,
    })?;
    ensure!(body.ends_with(&[0, 0]));
    body.truncate(body.len() - 2);
    body.push(0xfd);
    body.extend_from_slice(&u64::MAX.to_be_bytes());
    body.push(0);
    let mut c = h.open().await?;
    c.send_raw(&frame_with_len(body.len() as u32, &body))
        .await?;
    assert!(matches!(
        c.expect_error().await?,
        ProtocolError::BadFrame(_)
    ));

    // After Welcome: an Ack whose version vector claims 2^32 entries.
    let (mut c, _) = h.hello(false, vec![]).await?;
    let mut ack = encode(&ClientMsg::<Trip>::Ack {
        session: SessionId(1),
        certified: true,
        version: Default::default(),
    })?;
    ensure!(ack.ends_with(&[0]));
    ack.pop();
    ack.push(0xfc);
    ack.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send_raw(&frame_with_len(ack.len() as u32, &ack)).await?;
    assert!(matches!(
        c.expect_error().await?,
        ProtocolError::BadFrame(_)
    ));

    arena.wait_stat("/bad_frames", 2).await?;
    let rss_after = arena.rss_kib()?;
    println!("datacenter RSS {rss_before} KiB before, {rss_after} KiB after");
    ensure!(rss_after < rss_before + RSS_GROWTH_MAX_KIB);
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_upload_over_its_limits_is_refused() -> anyhow::Result<()> {
    let mut args = ARGS.to_vec();
    args.extend(["--max-upload-frames", "2"]);
    let arena = Arena::start(&args).await?;
    let h = arena.raw(190)?;
    let (_c, _, digest) = own_trip(&h, 1901).await?;
    let digest = OfferedCopy {
        digest,
        committed: true,
        known_committed: Default::default(),
        known_committed_driver: None,
    };

    // More upload frames than allowed.
    let mut c = h.open().await?;
    c.send(&ClientMsg::<Trip>::Hello {
        device: h.device,
        token: h.token,
        available: false,
        digests: vec![digest.clone()],
        more: true,
    })
    .await?;
    for _ in 0..3 {
        c.send(&ClientMsg::<Trip>::Upload {
            digests: vec![digest.clone()],
            more: true,
        })
        .await?;
    }
    let e = c.expect_error().await?;
    assert!(
        matches!(
            e,
            ProtocolError::Limit(LimitExceeded {
                kind: LimitKind::UploadFrames,
                max: 2
            })
        ),
        "{e}"
    );

    // More digests in one upload frame than allowed (64).
    let mut c = h.open().await?;
    c.send(&ClientMsg::<Trip>::Hello {
        device: h.device,
        token: h.token,
        available: false,
        digests: vec![],
        more: true,
    })
    .await?;
    c.send(&ClientMsg::<Trip>::Upload {
        digests: vec![digest; 65],
        more: false,
    })
    .await?;
    let e = c.expect_error().await?;
    assert!(
        matches!(
            e,
            ProtocolError::Limit(LimitExceeded {
                kind: LimitKind::DigestsPerFrame,
                max: 64
            })
        ),
        "{e}"
    );
    arena.wait_stat("/limits/upload_frames", 1).await?;
    arena.wait_stat("/limits/digests_per_frame", 1).await?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_bounded_in_count_and_time() -> anyhow::Result<()> {
    let mut args = ARGS.to_vec();
    args.extend(["--max-conns-per-addr", "16", "--limit-loopback"]);
    let mut arena = Arena::start(&args).await?;
    let rss_before = arena.rss_kib()?;
    let h = arena.raw(200)?;
    let flood = 64;
    let t0 = Instant::now();
    let attempts: Vec<_> = (0..flood)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.connect().await })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await? {
            Ok(conn) => accepted.push(conn),
            Err(e) => {
                refused += 1;
                if refused == 1 {
                    println!("refused connection: {e}");
                }
            }
        }
    }
    println!(
        "flood of {flood}: {} accepted, {refused} refused in {} ms",
        accepted.len(),
        t0.elapsed().as_millis()
    );
    // 127.0.0.1 has 16 slots, and the honest pair normally holds 2 of them.
    ensure!(
        accepted.len() <= 16,
        "{} flood connections accepted",
        accepted.len()
    );
    ensure!(refused >= flood - 16);
    // Accepted but silent: each is closed by the standby timeout (1.5 s here).
    for conn in &accepted {
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .context("a flood connection outlived the standby timeout")?;
    }
    ensure!(
        t0.elapsed() < Duration::from_secs(15),
        "flood took {:?}",
        t0.elapsed()
    );
    arena
        .wait_stat("/limits/connections_per_address", (flood - 16) as u64)
        .await?;
    arena.honest_progress(3).await?;
    // Slots are given back: the address can connect again.
    let (_c, results) = h.hello(false, vec![]).await?;
    ensure!(results.is_empty());
    let rss_after = arena.rss_kib()?;
    println!("datacenter RSS {rss_before} KiB before, {rss_after} KiB after");
    ensure!(rss_after < rss_before + RSS_GROWTH_MAX_KIB);
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_senders_are_cut_off() -> anyhow::Result<()> {
    let mut arena = Arena::start(ARGS).await?;
    let rss_before = arena.rss_kib()?;
    let h = arena.raw(210)?;
    let slow = 24;
    let cut_off = |e: &ProtocolError| {
        matches!(
            e,
            ProtocolError::Limit(LimitExceeded {
                kind: LimitKind::FrameTimeout,
                max: 500
            })
        )
    };
    // Many connections at once, each sending most of a 60,000-byte frame (the datacenter
    // holds it) and then one byte every 100 ms.
    let mut tasks = Vec::new();
    for _ in 0..slow {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = h.open().await?;
            let mut bytes = 60_000u32.to_be_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(0u8, 59_000));
            c.send_raw(&bytes).await?;
            c.dribble_until_error(&[0u8; 100], Duration::from_millis(100))
                .await
        }));
    }
    for t in tasks {
        let (e, took) = t.await??;
        ensure!(cut_off(&e), "{e}");
        ensure!(took < Duration::from_secs(5), "cut off after {took:?}");
    }
    // After Welcome: a small frame dribbled one byte every 150 ms.
    let (mut c, _) = h.hello(false, vec![]).await?;
    let frame = lifeboat_common::codec::encode_frame(&ClientMsg::<Trip>::SetAvailable {
        available: false,
    })?;
    let (e, took) = c
        .dribble_until_error(&frame, Duration::from_millis(150))
        .await?;
    ensure!(cut_off(&e), "{e}");
    println!(
        "slow sender after Welcome cut off after {} ms",
        took.as_millis()
    );
    arena
        .wait_stat("/limits/frame_timeout", slow as u64 + 1)
        .await?;
    let rss_after = arena.rss_kib()?;
    println!("datacenter RSS {rss_before} KiB before, {rss_after} KiB after {slow} slow senders");
    ensure!(rss_after < rss_before + RSS_GROWTH_MAX_KIB);
    arena.finish().await
}

/// A burst of ops from one device that reads its answers slowly. Each frame is handled by
/// the core on the connection's own reader before the next one is read (see the server's
/// `service::gate`), so nothing of the burst queues in front of the core: every op is
/// answered exactly once, in the order sent, none is turned away by the in-flight bound
/// (which only a queue in front of the core could fill), and the honest trip keeps
/// committing during the burst (the core's lock is first come, first served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_flood_is_answered_in_order_and_never_queues_in_front_of_the_core() -> anyhow::Result<()>
{
    let mut args = ARGS.to_vec();
    args.extend(["--max-inflight-ops", "8"]);
    let arena = Arena::start(&args).await?;
    // A device that reads its answers slowly: they back up at the datacenter.
    let h = RawDevice::with_window(
        220,
        &arena.cluster.keyring,
        &arena.cluster.ca_pem,
        arena.server(),
        Some(2048),
    )?;
    let (mut c, session, _) = own_trip(&h, 2201).await?;
    let n = 300u64;
    let mut burst = Vec::new();
    for seq in 2..2 + n {
        burst.extend(lifeboat_common::codec::encode_frame(
            &ClientMsg::<Trip>::Submit {
                session,
                seq,
                op: TripOp::Location { at: route_point(1) },
            },
        )?);
    }
    let honest_before = arena.honest_commits();
    c.send_raw(&burst).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut order = Vec::new();
    let mut limited = 0;
    while order.len() < n as usize {
        match c.next_answer().await? {
            lifeboat_tests::raw::Msg::OpResult { seq, outcome, .. } => {
                ensure!(!order.contains(&seq), "op {seq} answered twice");
                if matches!(&outcome, OpOutcome::Rejected(OpRejection::Limit(l)) if l.kind == LimitKind::InFlightOps)
                {
                    limited += 1;
                }
                order.push(seq);
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    let honest_during = arena.honest_commits() - honest_before;
    println!(
        "{n} ops answered, {limited} refused over the in-flight limit; the honest driver \
         committed {honest_during} ops meanwhile"
    );
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]),
        "answers out of order: {order:?}"
    );
    ensure!(limited == 0, "{limited} ops waited in front of the core");
    // The status file is rewritten every 500 ms: read one written after the last answer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    ensure!(
        arena.stat("/limits/in_flight_ops")? == 0,
        "the in-flight bound was hit"
    );
    arena.honest_progress(1).await?;
    arena.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_create_flood_is_limited_per_device() -> anyhow::Result<()> {
    let mut args = ARGS.to_vec();
    // One create token every 20 s: the test's few seconds never earn a new one.
    args.extend([
        "--max-sessions-per-device",
        "2",
        "--session-creates-per-minute",
        "3",
    ]);
    let arena = Arena::start(&args).await?;
    let h = arena.raw(230)?;
    let (mut c, _) = h.hello(false, vec![]).await?;
    let t0 = Instant::now();
    for s in 2301..=2302 {
        let (o, _) = c.submit(SessionId(s), 1, request()).await?;
        ensure!(o == OpOutcome::Applied, "create {s}: {o:?}");
    }
    let (o, _) = c.submit(SessionId(2303), 1, request()).await?;
    let per_device = OpOutcome::Rejected(OpRejection::Limit(LimitExceeded {
        kind: LimitKind::SessionsPerDevice,
        max: 2,
    }));
    assert_eq!(o, per_device);
    for s in 2301..=2302 {
        let (o, _) = c.submit(SessionId(s), 2, TripOp::Cancel).await?;
        ensure!(o == OpOutcome::Applied, "cancel {s}: {o:?}");
    }
    // Room again, but only one create left in this minute's budget of three.
    let (o, _) = c.submit(SessionId(2304), 1, request()).await?;
    ensure!(o == OpOutcome::Applied, "create 2304: {o:?}");
    let (o, _) = c.submit(SessionId(2305), 1, request()).await?;
    ensure!(
        t0.elapsed() < Duration::from_secs(20),
        "too slow to test the rate"
    );
    assert_eq!(
        o,
        OpOutcome::Rejected(OpRejection::Limit(LimitExceeded {
            kind: LimitKind::SessionCreateRate,
            max: 3
        }))
    );
    arena.wait_stat("/limits/sessions_per_device", 1).await?;
    arena.wait_stat("/limits/session_create_rate", 1).await?;
    arena.finish().await
}
