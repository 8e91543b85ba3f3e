//! A raw device for hostile-input tests: real QUIC (quinn) to a real `lifeboat-server`, but
//! the wire format spoken by hand, so a test can send what no edge client would: forged
//! ids, tampered or foreign digests, garbage, truncated and oversized frames, slow frames.
//!
//! Every read has a deadline; nothing here retries.

use anyhow::{bail, Context};
use lifeboat_common::codec::encode_frame;
use lifeboat_common::digest::SealedDigest;
use lifeboat_common::keyring::{DeviceToken, Keyring};
use lifeboat_common::wire::{
    ClientMsg, OfferedCopy, OpOutcome, ProtocolError, ServerMsg, SessionUpdate, UploadResult,
};
use lifeboat_common::{DeviceId, SessionId, Trip, TripOp};
use lifeboat_frame_io::read_frame;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub type Msg = ServerMsg<Trip>;

/// How long a raw device waits for any one answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A device identity and a QUIC client that trusts the region CA.
#[derive(Clone)]
pub struct RawDevice {
    pub device: DeviceId,
    pub token: DeviceToken,
    pub server: SocketAddr,
    endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
}

impl RawDevice {
    /// Device `id` with its genuine credential from `keyring`.
    pub fn new(
        id: u64,
        keyring: &Keyring,
        ca_pem: &[u8],
        server: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::with_window(id, keyring, ca_pem, server, None)
    }

    /// As [`RawDevice::new`], with a small QUIC receive window (a device that reads slowly
    /// makes the datacenter's answers back up).
    pub fn with_window(
        id: u64,
        keyring: &Keyring,
        ca_pem: &[u8],
        server: SocketAddr,
        stream_window: Option<u32>,
    ) -> anyhow::Result<Self> {
        let device = DeviceId(id);
        let mut client_cfg = lifeboat_edge::client_config(
            ca_pem,
            Duration::from_millis(300),
            Duration::from_secs(10),
        )?;
        if let Some(w) = stream_window {
            let mut t = quinn::TransportConfig::default();
            t.keep_alive_interval(Some(Duration::from_millis(300)))
                .max_idle_timeout(Some(Duration::from_secs(10).try_into()?))
                .stream_receive_window(w.into())
                .receive_window(w.into());
            client_cfg.transport_config(Arc::new(t));
        }
        Ok(Self {
            device,
            token: keyring.device_token(device),
            server,
            endpoint: lifeboat_edge::client_endpoint(&[server])?,
            client_cfg,
        })
    }

    /// A QUIC connection, no stream and no frame yet.
    pub async fn connect(&self) -> anyhow::Result<quinn::Connection> {
        let connecting =
            self.endpoint
                .connect_with(self.client_cfg.clone(), self.server, "localhost")?;
        Ok(tokio::time::timeout(ANSWER_WAIT, connecting)
            .await
            .context("QUIC handshake timed out")??)
    }

    /// A connection with its stream open, nothing sent.
    pub async fn open(&self) -> anyhow::Result<RawConn> {
        let conn = self.connect().await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(RawConn {
            conn,
            send,
            recv,
            buf: Vec::new(),
            latest: HashMap::new(),
        })
    }

    /// Connect and upload `digests` in a `Hello` carrying `device` and `token`; returns the
    /// connection and the datacenter's first answer (`Welcome` or `Error`).
    pub async fn hello_as(
        &self,
        device: DeviceId,
        token: DeviceToken,
        available: bool,
        digests: Vec<SealedDigest>,
    ) -> anyhow::Result<(RawConn, Msg)> {
        let mut c = self.open().await?;
        // Offered as not known committed: a raw client claims nothing about the chain.
        let digests = digests
            .into_iter()
            .map(|digest| OfferedCopy {
                digest,
                committed: false,
                known_committed: Default::default(),
                known_committed_driver: None,
            })
            .collect();
        c.send(&ClientMsg::Hello {
            device,
            token,
            available,
            digests,
            more: false,
        })
        .await?;
        let first = c.next_answer().await?;
        Ok((c, first))
    }

    /// Connect honestly (own id and credential) with these digests; the `Welcome` results.
    pub async fn hello(
        &self,
        available: bool,
        digests: Vec<SealedDigest>,
    ) -> anyhow::Result<(RawConn, Vec<UploadResult>)> {
        let (c, first) = self
            .hello_as(self.device, self.token, available, digests)
            .await?;
        match first {
            Msg::Welcome { results, .. } => Ok((c, results)),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }
}

/// One open connection of a raw device.
pub struct RawConn {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: Vec<u8>,
    /// The newest digest seen per session (from pushes and op results).
    pub latest: HashMap<SessionId, SealedDigest>,
}

impl RawConn {
    pub async fn send(&mut self, msg: &ClientMsg<Trip>) -> anyhow::Result<()> {
        let frame = encode_frame(msg)?;
        self.send.write_all(&frame).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// The next frame from the datacenter (`None`: it finished the stream), within
    /// [`ANSWER_WAIT`].
    pub async fn recv(&mut self) -> anyhow::Result<Option<Msg>> {
        let msg = tokio::time::timeout(
            ANSWER_WAIT,
            read_frame::<Msg, _>(&mut self.recv, &mut self.buf),
        )
        .await
        .context("no frame from the datacenter in time")??;
        if let Some(m) = &msg {
            self.remember(m);
        }
        Ok(msg)
    }

    fn remember(&mut self, m: &Msg) {
        let update = match m {
            Msg::Push { update } => Some(update),
            Msg::OpResult { update, .. } => update.as_ref(),
            _ => None,
        };
        if let Some(u) = update {
            self.latest
                .insert(u.digest.header.session, u.digest.clone());
        }
    }

    /// The next frame that is not a `Push`.
    pub async fn next_answer(&mut self) -> anyhow::Result<Msg> {
        loop {
            match self.recv().await? {
                Some(Msg::Push { .. }) => continue,
                Some(m) => return Ok(m),
                None => bail!(
                    "the datacenter finished the stream (close reason: {:?})",
                    self.conn.close_reason()
                ),
            }
        }
    }

    /// Submit an op and wait for its answer (pushes on the way are remembered).
    pub async fn submit(
        &mut self,
        session: SessionId,
        seq: u64,
        op: TripOp,
    ) -> anyhow::Result<(OpOutcome, Option<SessionUpdate<Trip>>)> {
        self.send(&ClientMsg::Submit { session, seq, op }).await?;
        self.answer_to(session, seq).await
    }

    /// Wait for the answer to op `(session, seq)`.
    pub async fn answer_to(
        &mut self,
        session: SessionId,
        seq: u64,
    ) -> anyhow::Result<(OpOutcome, Option<SessionUpdate<Trip>>)> {
        loop {
            match self.next_answer().await? {
                Msg::OpResult {
                    session: s,
                    seq: q,
                    outcome,
                    update,
                } if s == session && q == seq => return Ok((outcome, update)),
                Msg::Error { error } => bail!("datacenter error instead of an op result: {error}"),
                _ => continue,
            }
        }
    }

    /// Wait for a push of `session` whose digest satisfies `pred`.
    pub async fn push_where(
        &mut self,
        session: SessionId,
        pred: impl Fn(&SealedDigest) -> bool,
    ) -> anyhow::Result<SealedDigest> {
        if let Some(d) = self.latest.get(&session).filter(|d| pred(d)) {
            return Ok(d.clone());
        }
        loop {
            match self.recv().await? {
                Some(Msg::Push { update }) if update.digest.header.session == session => {
                    if pred(&update.digest) {
                        return Ok(update.digest);
                    }
                }
                Some(Msg::Error { error }) => bail!("datacenter error while waiting: {error}"),
                Some(_) => {}
                None => bail!("stream finished while waiting for a push of {session}"),
            }
        }
    }

    /// Read until the datacenter's typed `Error` frame, skipping anything else; fails if the
    /// stream ends without one.
    pub async fn expect_error(&mut self) -> anyhow::Result<ProtocolError> {
        loop {
            match self.recv().await {
                Ok(Some(Msg::Error { error })) => return Ok(error),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "stream finished without an Error frame (close reason: {:?})",
                    self.conn.close_reason()
                ),
                Err(e) => bail!(
                    "no Error frame: {e} (close reason: {:?})",
                    self.conn.close_reason()
                ),
            }
        }
    }

    /// Send `bytes` one at a time, `gap` apart (a slow sender), until the datacenter answers
    /// with its typed `Error` frame; returns it and how long it took.
    pub async fn dribble_until_error(
        &mut self,
        bytes: &[u8],
        gap: Duration,
    ) -> anyhow::Result<(ProtocolError, Duration)> {
        let t0 = std::time::Instant::now();
        let send = &mut self.send;
        let write = async move {
            for b in bytes {
                if send.write_all(std::slice::from_ref(b)).await.is_err() {
                    break;
                }
                tokio::time::sleep(gap).await;
            }
            // Everything sent and no answer yet: keep waiting for the reader's deadline.
            std::future::pending::<()>().await
        };
        let read = async {
            loop {
                let msg = tokio::time::timeout(
                    ANSWER_WAIT,
                    read_frame::<Msg, _>(&mut self.recv, &mut self.buf),
                )
                .await
                .context("no Error frame in time")??;
                match msg {
                    Some(Msg::Error { error }) => return Ok::<_, anyhow::Error>(error),
                    Some(_) => continue,
                    None => bail!("stream finished without an Error frame"),
                }
            }
        };
        tokio::select! {
            _ = write => bail!("unreachable: the writer never finishes"),
            e = read => Ok((e?, t0.elapsed())),
        }
    }

    /// Wait (bounded) until the datacenter closed the connection; its reason.
    pub async fn closed(&self, within: Duration) -> anyhow::Result<quinn::ConnectionError> {
        tokio::time::timeout(within, self.conn.closed())
            .await
            .context("the datacenter did not close the connection in time")
    }
}
