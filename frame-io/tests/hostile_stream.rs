//! Properties of the async frame reader against a hostile stream: any bytes, in any
//! chunking, give a message, a clean end or a typed error, and never more bytes buffered
//! than the frame limit. `LIFEBOAT_FUZZ_CASES=N` raises the number of cases.

use lifeboat_common::codec::CodecError;
use lifeboat_common::wire::ClientMsg;
use lifeboat_common::Trip;
use lifeboat_frame_io::{read_frame_limited, FrameLimits, FrameReadError};
use proptest::prelude::*;

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("LIFEBOAT_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        // No persistence file: CI runs from a fresh clone; failures print the input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The async frame reader, fed any bytes in any chunking: a message, a clean end, or a
    /// typed error; never more bytes buffered than the frame limit.
    #[test]
    fn frame_reader_handles_any_stream(data in proptest::collection::vec(any::<u8>(), 0..2_000), chunk in 1usize..64, max in 1usize..4_096) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut w, mut r) = tokio::io::duplex(chunk);
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for c in data.chunks(chunk) {
                    if w.write_all(c).await.is_err() {
                        return;
                    }
                }
            });
            let limits = FrameLimits { max_bytes: max, frame_timeout: None };
            let mut buf = Vec::new();
            // Bounded: every frame consumes at least its 4-byte prefix.
            for _ in 0..1_000 {
                match read_frame_limited::<ClientMsg<Trip>, _>(&mut r, &mut buf, &limits).await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(FrameReadError::Codec(CodecError::TooLarge { max: m, .. })) => {
                        assert_eq!(m, max);
                        break;
                    }
                    Err(_) => break,
                }
                assert!(buf.len() <= max);
            }
            drop(r);
            let _ = writer.await;
        });
    }
}
