//! Reading and writing frames on an async byte stream (a QUIC stream).
//!
//! The only I/O helper in the core crate: it is shared verbatim by the server and the edge
//! client and holds no protocol state. A frame's length is validated before its body is
//! read, so a hostile prefix never causes a large allocation.

use crate::wire::{decode_exact, frame_len, CodecError, FRAME_HEADER_BYTES, MAX_FRAME_BYTES};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("stream closed")]
    Closed,
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Read one frame and decode it. `Ok(None)` means the peer finished the stream cleanly
/// between frames.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameReadError> {
    let mut prefix = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < FRAME_HEADER_BYTES {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameReadError::Closed)
            };
        }
        got += n;
    }
    let len = frame_len(prefix)?;
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameReadError::Closed
        } else {
            FrameReadError::Io(e)
        }
    })?;
    Ok(Some(decode_exact(buf, MAX_FRAME_BYTES)?))
}
