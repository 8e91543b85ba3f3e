//! One connection: the handshake, the connect upload (reassembled by the core's
//! [`ConnectIntake`](lifeboat_common::datacenter::ConnectIntake)), then frames into the core
//! (handed in on this task, see [`super::gate`]); answers leave through the connection's [`Outbox`].
//!
//! Invariants: the handshake finishes within the handshake timeout, the stream opens within
//! the standby timeout (a device's standby connection waits there, handshake done), and the
//! whole connect upload finishes within the handshake timeout from the stream's first byte
//! (slowloris); a refused connect gets its typed error as the last frame; the
//! in-flight bound ([`InflightRule`](lifeboat_common::datacenter::InflightRule)) is applied
//! before the core sees a frame; the device id comes only from the verified credential.

use super::*;

use super::outbox::Outbox;
use crate::keyring_watch::KeyringWatch;
use crate::limits::{InflightGate, LimitCounters, Limits};
use lifeboat_common::codec::{encode_frame, CodecError};
use lifeboat_common::datacenter::{ConnectIntake, Connected, InflightRule, IntakeStep};
use lifeboat_common::limits::LimitKind;
use lifeboat_common::wire::{ClientMsg, ProtocolError, ServerMsg};
use lifeboat_common::{DeviceId, Trip};
use lifeboat_frame_io::{read_frame_limited, FrameLimits, FrameReadError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct ConnCtx {
    pub(super) conn_id: u64,
    /// Which of the datacenter's QUIC endpoints accepted it.
    pub(super) endpoint: usize,
    pub(super) core: Arc<super::gate::CoreGate>,
    pub(super) keyring: Arc<KeyringWatch>,
    pub(super) counters: Arc<DriverCounters>,
    pub(super) handshake: Duration,
    /// How long a handshaken connection may wait before it opens its stream (a standby).
    pub(super) standby: Duration,
    pub(super) max_upload_frames: usize,
    pub(super) conn_queue: usize,
    pub(super) frames: FrameLimits,
    pub(super) limits: Limits,
    pub(super) limit_hits: Arc<LimitCounters>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("handshake timed out")]
    Timeout,
    #[error("no Hello within the standby timeout")]
    StandbyExpired,
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("frame: {0}")]
    Frame(#[from] FrameReadError),
    #[error("protocol: {0}")]
    Protocol(ProtocolError),
    #[error(transparent)]
    CoreGone(#[from] super::gate::CoreGone),
}

pub(super) async fn refuse(
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    error: ProtocolError,
) -> ConnError {
    if let Ok(frame) = encode_frame(&ServerMsg::<Trip>::Error {
        error: error.clone(),
    }) {
        let _ = tokio::time::timeout(Duration::from_millis(500), send.write_all(&frame)).await;
        let _ = send.finish();
        // The device closes once it has read the refusal; a close of ours right after the
        // acknowledgement could lose it before the device's app read it (see the outbox).
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
    }
    conn.close(1u32.into(), error.to_string().as_bytes());
    ConnError::Protocol(error)
}

pub(super) async fn handle_conn(
    incoming: quinn::Incoming,
    handshake: tokio::sync::OwnedSemaphorePermit,
    ctx: &ConnCtx,
) -> Result<(), ConnError> {
    let timed_out = |_| {
        ctx.limit_hits.hit(LimitKind::HandshakeTimeout);
        ConnError::Timeout
    };
    let conn = tokio::time::timeout(ctx.handshake, incoming)
        .await
        .map_err(timed_out)??;
    // The crypto is done: the next device may start its handshake.
    drop(handshake);
    ctx.counters.handshakes.fetch_add(1, Ordering::Relaxed);
    if let Some(n) = ctx
        .counters
        .handshakes_per_endpoint
        .get()
        .and_then(|v| v.get(ctx.endpoint))
    {
        n.fetch_add(1, Ordering::Relaxed);
    }
    // A device's standby connection waits here, handshake done, until its failover (or the
    // standby timeout; it then opens another). Bounded by `max_connections` and the
    // per-address limit like any connection; the upload below still has the handshake
    // timeout.
    ctx.counters.standby.fetch_add(1, Ordering::Relaxed);
    let opened = tokio::time::timeout(ctx.standby.max(ctx.handshake), conn.accept_bi()).await;
    ctx.counters.standby.fetch_sub(1, Ordering::Relaxed);
    let (mut send, mut recv) = match opened {
        Ok(streams) => streams?,
        Err(_) => {
            conn.close(0u32.into(), b"standby timeout");
            return Err(ConnError::StandbyExpired);
        }
    };
    let mut buf = Vec::new();
    let connected = match read_connect(&mut recv, &mut buf, ctx).await {
        Ok(c) => c,
        Err(e) => return Err(refuse(&mut send, &conn, e).await),
    };
    let device = connected.device;
    let inflight = InflightGate::new(ctx.limits.max_inflight_ops);
    let (reply_tx, mut writer) = Outbox::new(send, conn.clone(), inflight.clone(), ctx.conn_queue);
    ctx.core
        .input(Input::Connect {
            conn_id: ctx.conn_id,
            device,
            available: connected.available,
            digests: connected.digests,
            tx: reply_tx.clone(),
            conn: conn.clone(),
        })
        .await?;
    let result = read_frames(
        &mut recv, &mut buf, device, &reply_tx, &inflight, &conn, ctx,
    )
    .await;
    if let Err(ConnError::Protocol(e)) = &result {
        // The typed error goes out as the last frame (bounded wait), and the close reason
        // carries its text too.
        if reply_tx
            .try_send(ServerMsg::Error { error: e.clone() })
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_millis(1_000), &mut writer).await;
        }
        conn.close(1u32.into(), e.to_string().as_bytes());
    }
    let _ = ctx
        .core
        .input(Input::Disconnect {
            conn_id: ctx.conn_id,
            device,
        })
        .await;
    writer.abort();
    result
}

/// Read the connect upload, all of it within the handshake timeout (slowloris); every
/// refusal is counted here, by reason.
async fn read_connect(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
    ctx: &ConnCtx,
) -> Result<Connected, ProtocolError> {
    let keyring = ctx.keyring.current();
    let upload = tokio::time::timeout(ctx.handshake, async {
        let mut intake = ConnectIntake::new(ctx.max_upload_frames);
        loop {
            let Some(msg) =
                read_frame_limited::<ClientMsg<Trip>, _>(recv, buf, &ctx.frames).await?
            else {
                return Ok::<_, FrameReadError>(Err(ProtocolError::ExpectedHello));
            };
            match intake.handle_frame(msg, &keyring) {
                Ok(IntakeStep::More) => {}
                Ok(IntakeStep::Done(connected)) => return Ok(Ok(connected)),
                Err(e) => return Ok(Err(e)),
            }
        }
    })
    .await;
    match upload {
        Err(_) => Err(limit(
            ctx,
            LimitKind::HandshakeTimeout,
            ctx.handshake.as_millis(),
        )),
        Ok(Err(e)) => Err(frame_error(ctx, e)),
        Ok(Ok(Err(e))) => {
            match &e {
                ProtocolError::BadCredential => {
                    ctx.counters.bad_credentials.fetch_add(1, Ordering::Relaxed);
                }
                ProtocolError::Limit(exceeded) => ctx.limit_hits.hit(exceeded.kind),
                _ => {
                    ctx.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e)
        }
        Ok(Ok(Ok(connected))) => Ok(connected),
    }
}

/// Frames after the connect upload, into the core queue, until the stream ends or breaks
/// a rule (the in-flight bound is answered here and the core never sees those frames).
async fn read_frames(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
    device: DeviceId,
    reply_tx: &Outbox,
    inflight: &InflightGate,
    conn: &quinn::Connection,
    ctx: &ConnCtx,
) -> Result<(), ConnError> {
    loop {
        match read_frame_limited::<ClientMsg<Trip>, _>(recv, buf, &ctx.frames).await {
            Ok(Some(msg)) if InflightRule::takes_slot(&msg) && !inflight.submit() => {
                // Over the in-flight limit: a typed, retryable answer; the core never sees it.
                let exceeded = ctx.limits.exceeded(LimitKind::InFlightOps);
                ctx.limit_hits.hit(LimitKind::InFlightOps);
                if let Some(answer) = InflightRule::refusal(&msg, exceeded) {
                    if reply_tx.try_send(answer).is_err() {
                        inflight.answered();
                    }
                }
            }
            Ok(Some(ClientMsg::Hello { .. } | ClientMsg::Upload { .. })) => {
                ctx.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                return Err(ConnError::Protocol(ProtocolError::BadFrame(
                    "Hello/Upload after connect".into(),
                )));
            }
            Ok(Some(msg)) => {
                let input = Input::Frame {
                    device,
                    msg,
                    received: std::time::Instant::now(),
                };
                ctx.core.input(input).await?;
            }
            Ok(None) => return Ok(()),
            // `Closed` here is a stream that ended mid-frame (a truncated frame).
            Err(
                e @ (FrameReadError::Codec(_)
                | FrameReadError::TooSlow { .. }
                | FrameReadError::Closed),
            ) => return Err(ConnError::Protocol(frame_error(ctx, e))),
            Err(e) => {
                if matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut)) {
                    ctx.limit_hits.hit(LimitKind::IdleTimeout);
                }
                return Err(e.into());
            }
        }
    }
}

/// Count a limit hit and build its typed error.
pub(super) fn limit(ctx: &ConnCtx, kind: LimitKind, max: impl TryInto<u64>) -> ProtocolError {
    ctx.limit_hits.hit(kind);
    ProtocolError::Limit(lifeboat_common::limits::LimitExceeded::new(kind, max))
}

/// The typed error for a frame that could not be read: a limit, or a bad frame.
pub(super) fn frame_error(ctx: &ConnCtx, e: FrameReadError) -> ProtocolError {
    match e {
        FrameReadError::Codec(CodecError::TooLarge { max, .. }) => {
            limit(ctx, LimitKind::FrameBytes, max)
        }
        FrameReadError::TooSlow { timeout_ms } => limit(ctx, LimitKind::FrameTimeout, timeout_ms),
        other => {
            ctx.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            ProtocolError::BadFrame(other.to_string())
        }
    }
}
