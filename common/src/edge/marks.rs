//! Reading dedup watermarks: a device's `(last_seq, applied_bits)` pair says, for the last
//! [`DEDUP_WINDOW`] seqs, which ops were applied (bit `i` is the outcome of `last_seq - i`).
//!
//! Invariant: one mark covers another only if it knows every outcome the other knows, with
//! the same result; a seq older than the window is known only as "decided".

use crate::dedup::DEDUP_WINDOW;

/// Whether watermark `(seq, bits)` covers watermark `(seq_b, bits_b)`: it has processed
/// every op of the other, with the same outcomes where both still remember them.
pub(super) fn mark_covers(seq: u64, bits: u64, seq_b: u64, bits_b: u64) -> bool {
    if seq < seq_b {
        return false;
    }
    let shift = seq - seq_b;
    if shift >= DEDUP_WINDOW {
        return true;
    }
    let known = DEDUP_WINDOW - shift;
    let mask = if known >= 64 {
        u64::MAX
    } else {
        (1u64 << known) - 1
    };
    let mask = mask
        & if seq_b >= 64 {
            u64::MAX
        } else {
            (1u64 << seq_b) - 1
        };
    (bits >> shift) & mask == bits_b & mask
}

/// The outcome of `seq` in watermark `(last, bits)`: `Some(true)` applied, `Some(false)`
/// rejected, `None` not processed. Outcomes older than the window count as applied (the
/// datacenter answers them `AlreadyProcessed`).
pub(super) fn outcome_in(last: u64, bits: u64, seq: u64) -> Option<bool> {
    if seq == 0 || seq > last {
        return None;
    }
    let age = last - seq;
    if age >= DEDUP_WINDOW {
        return Some(true);
    }
    Some((bits >> age) & 1 == 1)
}
