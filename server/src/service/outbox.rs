//! One connection's way out: frames are written straight into the QUIC stream by whoever
//! sends them (the core's turn of any reader, or a reader for its own refusals) when nothing
//! of this connection waits, and handed to the connection's writer task otherwise.
//!
//! A direct write saves a task hop per frame (the actor's answer no longer wakes a writer
//! task that wakes the connection), and it is only tried when it cannot overtake anything.
//!
//! Invariants:
//! - every decision (write now, or queue) is taken under one short lock (`queued`), so two
//!   senders on two threads never interleave their bytes: a frame is written directly only
//!   while nothing is queued or being written by the writer (`queued == 0`), and the part of
//!   it QUIC did not take at once is queued before the lock is let go;
//! - frames of one sender leave in the order it sent them;
//! - the writer's queue is bounded ([`Outbox::new`]'s `capacity`): full means a slow
//!   consumer (the caller closes the connection), never growth; a direct write never waits
//!   (it is polled once: what QUIC's flow control does not take at once goes to the writer);
//! - an `Error` frame is the last: it always goes through the writer, which finishes the
//!   stream after it and leaves the close to the peer (bounded, [`LAST_FRAME_WAIT`]): a
//!   close of ours could overtake the frame on its way to the peer's app;
//! - a broken stream closes the connection (whoever sees it first), so its reader stops too;
//! - an answer that releases an in-flight slot ([`InflightRule::releases_slot`]) releases it
//!   when it is accepted here (written or queued).

use super::Msg;
use crate::limits::InflightGate;
use lifeboat_common::codec::encode_frame;
use lifeboat_common::datacenter::InflightRule;
use lifeboat_common::wire::ServerMsg;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// Why a frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum OutboxError {
    /// The writer's queue is full: a slow consumer.
    #[error("output queue full")]
    Full,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
}

/// A frame for the writer task: its bytes, and whether it is the last.
struct Queued {
    frame: Vec<u8>,
    last: bool,
}

/// See the module docs.
pub(super) struct Outbox {
    stream: Arc<Mutex<quinn::SendStream>>,
    queue: mpsc::Sender<Queued>,
    /// Frames handed to the writer and not yet written; held while deciding.
    queued: Arc<std::sync::Mutex<usize>>,
    conn: quinn::Connection,
    inflight: Arc<InflightGate>,
}

impl Outbox {
    /// The outbox of a connection, and its writer task (which closes the connection when
    /// the stream breaks, after the last frame, or when every [`Outbox`] handle is gone).
    pub(super) fn new(
        send: quinn::SendStream,
        conn: quinn::Connection,
        inflight: Arc<InflightGate>,
        capacity: usize,
    ) -> (Arc<Outbox>, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let stream = Arc::new(Mutex::new(send));
        let queued = Arc::new(std::sync::Mutex::new(0));
        let writer = tokio::spawn(write_queued(
            stream.clone(),
            rx,
            queued.clone(),
            conn.clone(),
        ));
        let outbox = Outbox {
            stream,
            queue,
            queued,
            conn,
            inflight,
        };
        (Arc::new(outbox), writer)
    }

    /// Send one message (see the module docs for when it is written at once).
    pub(super) fn try_send(&self, msg: Msg) -> Result<(), OutboxError> {
        let last = matches!(msg, ServerMsg::Error { .. });
        let releases = InflightRule::releases_slot(&msg);
        // A message that does not encode is a bug of ours, not the peer's: dropped, as the
        // writer always did.
        let Ok(frame) = encode_frame(&msg) else {
            return Ok(());
        };
        self.accept(frame, last)?;
        if releases {
            self.inflight.answered();
        }
        Ok(())
    }

    /// Write the frame now if nothing waits, else (or for what QUIC did not take) queue it.
    fn accept(&self, frame: Vec<u8>, last: bool) -> Result<(), OutboxError> {
        // A poisoned lock only means a sender panicked; the count is still right.
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let rest = if *queued == 0 && !last {
            // Nothing queued, so the writer does not hold the stream: the lock is free.
            let Ok(mut stream) = self.stream.try_lock() else {
                return self.enqueue(&mut queued, frame, last);
            };
            match poll_once(stream.write(&frame)) {
                Some(Ok(n)) if n >= frame.len() => return Ok(()),
                Some(Ok(n)) => frame[n..].to_vec(),
                Some(Err(_)) => {
                    self.conn.close(0u32.into(), b"closed");
                    return Err(OutboxError::Closed);
                }
                None => frame,
            }
        } else {
            frame
        };
        self.enqueue(&mut queued, rest, last)
    }

    /// Hand bytes to the writer (the caller holds the `queued` lock).
    fn enqueue(&self, queued: &mut usize, frame: Vec<u8>, last: bool) -> Result<(), OutboxError> {
        match self.queue.try_send(Queued { frame, last }) {
            Ok(()) => {
                *queued += 1;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(OutboxError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Closed),
        }
    }
}

/// Poll a future once, without waiting: its output if it is ready at once.
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// How long the writer waits, after the last frame, for the peer to close the connection
/// before it closes it itself, which loses whatever the peer's app has not read yet. A
/// device closes as soon as it reads the last frame; this only bounds one that does not, and
/// leaves room for a few retransmissions on a lossy link (a drain order must get through).
const LAST_FRAME_WAIT: Duration = Duration::from_secs(2);

/// The writer task: queued frames, in order; after the last one the stream is finished.
async fn write_queued(
    stream: Arc<Mutex<quinn::SendStream>>,
    mut rx: mpsc::Receiver<Queued>,
    queued: Arc<std::sync::Mutex<usize>>,
    conn: quinn::Connection,
) {
    while let Some(Queued { frame, last }) = rx.recv().await {
        let mut send = stream.lock().await;
        let wrote = send.write_all(&frame).await;
        if wrote.is_ok() && last {
            let _ = send.finish();
            // Not the acknowledgement: the peer's transport acknowledges data its app has
            // not read yet, and a close then would lose it (a drain order acknowledged but
            // never read). The device closes once it has read the last frame.
            let _ = tokio::time::timeout(LAST_FRAME_WAIT, conn.closed()).await;
        }
        // The stream is let go before the count drops, so a sender that sees 0 finds it free.
        drop(send);
        let mut n = queued.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        drop(n);
        if wrote.is_err() || last {
            break;
        }
    }
    conn.close(0u32.into(), b"closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::Region;
    use lifeboat_common::codec::{decode_exact, frame_len, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};
    use lifeboat_common::ids::SessionId;

    const SENDERS: u64 = 2;
    const FRAMES: u64 = 2_000;

    fn message(sender: u64, i: u64) -> Msg {
        ServerMsg::Removed {
            session: SessionId(sender * 1_000_000 + i),
        }
    }

    /// Two threads send through one outbox while the reader is slow and its receive window
    /// tiny, so writes are cut short by flow control and the rest of a frame is queued: every
    /// frame must arrive whole, and each sender's frames in the order it sent them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_senders_under_flow_control_never_interleave_their_frames() {
        let dir = tempfile::tempdir().unwrap();
        Region::init(dir.path()).unwrap();
        let region = Region::load(dir.path()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(region.cert_chain.clone(), region.key.clone_key())
            .unwrap();
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let server_cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();

        let ca = std::fs::read(Region::ca_path(dir.path())).unwrap();
        let mut client_cfg =
            lifeboat_edge::client_config(&ca, Duration::from_secs(1), Duration::from_secs(10))
                .unwrap();
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(1_000u32.into())
            .receive_window(2_000u32.into());
        client_cfg.transport_config(Arc::new(transport));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();

        let reader = tokio::spawn(async move {
            let conn = client
                .connect_with(client_cfg, addr, "localhost")
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            let mut next = [0u64; SENDERS as usize];
            for n in 0..SENDERS * FRAMES {
                if n % 64 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut prefix = [0u8; FRAME_HEADER_BYTES];
                recv.read_exact(&mut prefix).await.unwrap();
                let mut body = vec![0u8; frame_len(prefix).unwrap()];
                recv.read_exact(&mut body).await.unwrap();
                let msg: Msg = decode_exact(&body, MAX_FRAME_BYTES)
                    .unwrap_or_else(|e| panic!("frame {n} is not whole: {e}"));
                let ServerMsg::Removed { session } = msg else {
                    panic!("frame {n}: unexpected {msg:?}");
                };
                let (sender, i) = (session.0 / 1_000_000, session.0 % 1_000_000);
                assert_eq!(i, next[sender as usize], "sender {sender} out of order");
                next[sender as usize] += 1;
            }
            conn
        });

        let conn = server.accept().await.unwrap().await.unwrap();
        let (send, mut recv) = conn.accept_bi().await.unwrap();
        let mut first = [0u8; 1];
        recv.read_exact(&mut first).await.unwrap();
        let capacity = (SENDERS * FRAMES) as usize;
        let (outbox, _writer) = Outbox::new(send, conn.clone(), InflightGate::new(8), capacity);
        std::thread::scope(|s| {
            for sender in 0..SENDERS {
                let outbox = &outbox;
                s.spawn(move || {
                    for i in 0..FRAMES {
                        assert_eq!(outbox.try_send(message(sender, i)), Ok(()));
                        if i % 16 == 0 {
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });
        let client_conn = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the reader got every frame within 30 s")
            .unwrap();
        client_conn.close(0u32.into(), b"done");
    }
}
