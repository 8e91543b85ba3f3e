//! The frame codec: bincode with one fixed configuration, and the length-prefixed frame.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode (standard
//! config, big-endian, varint). Invariants, all checked on decode and each a typed
//! [`CodecError`]:
//! - the length is at most [`MAX_FRAME_BYTES`] (checked before any allocation);
//! - bincode decodes with an explicit byte limit, so a hostile length inside a frame (a
//!   "vector of 2^60 items") is refused instead of allocated;
//! - the whole frame must be consumed: trailing bytes are an error, not ignored.
//!
//! The codec knows no message: [`crate::wire`] (the message set) and [`crate::digest`] (the
//! sealed digest's plaintext) both encode with it.

use bincode::config::{BigEndian, Configuration, Limit, Varint};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame either side sends or accepts (C6).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Length prefix size.
pub const FRAME_HEADER_BYTES: usize = 4;

type Config = Configuration<BigEndian, Varint, Limit<MAX_FRAME_BYTES>>;

fn config() -> Config {
    bincode::config::standard()
        .with_big_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_FRAME_BYTES>()
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame (or its claimed length) is over the limit; refused before any allocation.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes the frame has or its length prefix claims.
        len: usize,
        /// The limit that applied, in bytes (at most [`MAX_FRAME_BYTES`]).
        max: usize,
    },
    /// bincode could not decode the bytes as the expected type (bincode's message).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but did not use every byte; the count of bytes left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// bincode could not encode the value (bincode's message), e.g. over the byte limit.
    #[error("could not encode: {0}")]
    Encode(String),
}

/// Encode a value with the wire configuration.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// What one encode allocates up front: a digest, an op and their frames fit (one allocation
/// instead of a chain of reallocations on the hot path); larger values grow as needed.
const ENCODE_CAPACITY: usize = 256;

/// Append the encoding of `value` to `out`.
fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(drop)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// The size of `value`'s encoding, without encoding it into memory.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(size.bytes_written)
}

/// Decode a value that must use every byte of `bytes`, refusing inputs over `max` bytes.
pub fn decode_exact<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    let max = max.min(MAX_FRAME_BYTES);
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// Encode a message as a length-prefixed frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    // One buffer: the length prefix is written once the body's length is known.
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + ENCODE_CAPACITY);
    frame.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    encode_into(msg, &mut frame)?;
    let len = frame.len() - FRAME_HEADER_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Validate a length prefix before reading the body.
pub fn frame_len(prefix: [u8; FRAME_HEADER_BYTES]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let msg = (3u64, String::from("arrived"), vec![1u8, 2, 3]);
        let frame = encode_frame(&msg).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: (u64, String, Vec<u8>) = decode_exact(&frame[4..], MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        assert!(matches!(
            frame_len(u32::MAX.to_be_bytes()),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&true).unwrap();
        bytes.push(0);
        assert_eq!(
            decode_exact::<bool>(&bytes, MAX_FRAME_BYTES),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_body_over_the_limit_is_refused_on_encode_and_decode() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            encode_frame(&big),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_exact::<Vec<u8>>(&big, MAX_FRAME_BYTES),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
