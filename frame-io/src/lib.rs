//! # lifeboat-frame-io: reading frames of the wire codec from an async byte stream
//!
//! The one piece of stream I/O the server and the edge client share (a QUIC stream, or any
//! `AsyncRead`). It lives outside `lifeboat-common` so that the replication core has no
//! tokio dependency; it holds no protocol state. Invariants:
//! - a frame's length is validated (against [`FrameLimits::max_bytes`], itself at most
//!   [`MAX_FRAME_BYTES`]) before its body is read;
//! - the body buffer grows only as bytes actually arrive, so a hostile prefix that claims a
//!   large frame and then sends nothing costs nothing;
//! - with [`FrameLimits::frame_timeout`] set, a frame whose first byte arrived must be
//!   complete within that time (a slow sender, "slowloris", is cut off); the wait *between*
//!   frames is not limited here (QUIC's idle timeout covers a silent peer).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use lifeboat_common::codec::{
    decode_exact, frame_len, CodecError, FRAME_HEADER_BYTES, MAX_FRAME_BYTES,
};
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The stream ended in the middle of a frame (a clean end between frames is `Ok(None)`).
    #[error("stream closed")]
    Closed,
    /// Reading the stream failed (the connection was reset or lost).
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is over the limit (refused before its body is read) or does not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A frame was started but not finished within the frame timeout.
    #[error("frame not completed within {timeout_ms} ms (slow sender)")]
    TooSlow {
        /// The frame timeout that ran out, in ms.
        timeout_ms: u64,
    },
}

/// Bounds on reading one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest accepted frame body (clamped to [`MAX_FRAME_BYTES`]).
    pub max_bytes: usize,
    /// Time allowed from a frame's first byte to its last; `None`: unlimited.
    pub frame_timeout: Option<Duration>,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_FRAME_BYTES,
            frame_timeout: None,
        }
    }
}

/// Read one frame and decode it, with the default limits (largest frame, no timeout).
/// `Ok(None)` means the peer finished the stream cleanly between frames.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameReadError> {
    read_frame_limited(reader, buf, &FrameLimits::default()).await
}

/// Read one frame and decode it within `limits`. `Ok(None)` means the peer finished the
/// stream cleanly between frames.
pub async fn read_frame_limited<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limits: &FrameLimits,
) -> Result<Option<T>, FrameReadError> {
    let mut prefix = [0u8; FRAME_HEADER_BYTES];
    // The first byte may take as long as it likes: an idle device waits for pushes.
    let n = reader.read(&mut prefix).await?;
    if n == 0 {
        return Ok(None);
    }
    let rest = read_rest(reader, buf, &mut prefix, n, limits.max_bytes);
    let len = match limits.frame_timeout {
        Some(t) => tokio::time::timeout(t, rest)
            .await
            .map_err(|_| FrameReadError::TooSlow {
                timeout_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
            })??,
        None => rest.await?,
    };
    let max = limits.max_bytes.min(MAX_FRAME_BYTES);
    Ok(Some(decode_exact(&buf[..len], max)?))
}

/// The rest of the prefix and the body; returns the body length (the body is `buf[..len]`).
async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    prefix: &mut [u8; FRAME_HEADER_BYTES],
    mut got: usize,
    max_bytes: usize,
) -> Result<usize, FrameReadError> {
    while got < FRAME_HEADER_BYTES {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(FrameReadError::Closed);
        }
        got += n;
    }
    // The configured limit first, so the peer is told the limit that applies to it.
    let max = max_bytes.min(MAX_FRAME_BYTES);
    let claimed = u32::from_be_bytes(*prefix) as usize;
    if claimed > max {
        return Err(CodecError::TooLarge { len: claimed, max }.into());
    }
    let len = frame_len(*prefix)?;
    buf.clear();
    // Grow with the bytes that actually arrive, not with what the prefix claims.
    let read = (&mut *reader).take(len as u64).read_to_end(buf).await?;
    if read < len {
        return Err(FrameReadError::Closed);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::codec::encode_frame;
    use lifeboat_common::wire::ClientMsg;
    use lifeboat_common::Trip;
    use tokio::io::AsyncWriteExt;

    fn msg() -> ClientMsg<Trip> {
        ClientMsg::SetAvailable { available: true }
    }

    #[tokio::test]
    async fn frames_split_into_single_bytes_still_decode() {
        let frame = encode_frame(&msg()).unwrap();
        let (mut w, mut r) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            for b in frame {
                w.write_all(&[b]).await.unwrap();
            }
        });
        let mut buf = Vec::new();
        let got: Option<ClientMsg<Trip>> = read_frame(&mut r, &mut buf).await.unwrap();
        assert_eq!(got, Some(msg()));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn frame_over_the_configured_limit_is_refused_before_its_body() {
        let frame = encode_frame(&msg()).unwrap();
        let (mut w, mut r) = tokio::io::duplex(64);
        // Only the prefix is sent: the refusal must not wait for the body.
        w.write_all(&frame[..FRAME_HEADER_BYTES]).await.unwrap();
        let limits = FrameLimits {
            max_bytes: 1,
            frame_timeout: None,
        };
        let r = read_frame_limited::<ClientMsg<Trip>, _>(&mut r, &mut Vec::new(), &limits).await;
        assert!(
            matches!(
                r,
                Err(FrameReadError::Codec(CodecError::TooLarge { max: 1, .. }))
            ),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_frame_started_but_not_finished_in_time_is_cut_off() {
        let (mut w, mut r) = tokio::io::duplex(64);
        // Claims 100 bytes, sends 2 of them, then stalls.
        w.write_all(&[0, 0, 0, 100, 1, 2]).await.unwrap();
        let limits = FrameLimits {
            max_bytes: MAX_FRAME_BYTES,
            frame_timeout: Some(Duration::from_millis(200)),
        };
        let mut buf = Vec::new();
        let r = read_frame_limited::<ClientMsg<Trip>, _>(&mut r, &mut buf, &limits).await;
        assert!(
            matches!(r, Err(FrameReadError::TooSlow { timeout_ms: 200 })),
            "{r:?}"
        );
        assert!(buf.capacity() < 100, "buffer grew to {}", buf.capacity());
        drop(w);
    }

    #[tokio::test]
    async fn truncated_frame_is_a_closed_stream_not_a_message() {
        let frame = encode_frame(&msg()).unwrap();
        let (mut w, mut r) = tokio::io::duplex(64);
        w.write_all(&frame[..frame.len() - 1]).await.unwrap();
        drop(w);
        let r = read_frame::<ClientMsg<Trip>, _>(&mut r, &mut Vec::new()).await;
        assert!(matches!(r, Err(FrameReadError::Closed)), "{r:?}");
    }
}
