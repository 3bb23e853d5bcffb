//! Which stored notes a candidate is compared with: the prefilter that keeps a message's cost
//! flat as a user's memory grows, without changing any decision.
//!
//! A candidate can only duplicate a note with the same content hash or with a cosine at or
//! above the threshold ([`DedupPolicy::decide`](super::dedup::DedupPolicy::decide)); every
//! other note is passed over by [`best_match`](super::dedup::DedupPolicy::best_match) whatever
//! it holds. Two filters drop such notes before the exact comparison, each with a margin:
//! - in PostgreSQL, the **signature** (one bit per component, set when it is > 0; migration 3
//!   computes it from the stored `embedding`): two unit vectors at angle θ differ in about
//!   `384·θ/π` of these bits, so a note whose Hamming distance to every candidate is above
//!   [`signature_radius`] is not read at all. The radius is [`RADIUS_FACTOR`] times the
//!   expected distance at the threshold; a randomised 10,000-note test on clusters of real
//!   embeddings finds every note at or above the threshold (recall 1.0);
//! - in memory, [`may_reach`]: an 8-lane dot product whose rounding differs from the exact one
//!   by far less than its margin, so only notes that cannot reach the threshold are skipped
//!   (this one is exact by construction: it is a proof, not a statistic).
//!
//! The exact cosine of [`Embedding::cosine`] then decides, on exactly the stored floats.

use crate::types::{Embedding, InvalidValue, EMBEDDING_DIM};

/// How many times the expected Hamming distance at the threshold the signature radius allows.
/// Measured on real embeddings (the README has the table): among 13,095 pairs of 9,857
/// realistic notes at cosine ≥ 0.80 the farthest differed in 102 of 384 bits (1.30× the
/// expected 78.6; 99.9th percentile 97), and on 3,000 note-like sentences in 103. 1.45× (115
/// bits at 0.80) leaves 12 bits over the worst seen; each extra bit reads ~10 % more notes.
pub const RADIUS_FACTOR: f64 = 1.45;

/// Signature bits a note may differ in from a candidate and still be read, for `threshold`.
pub fn signature_radius(threshold: f32) -> i32 {
    let threshold = f64::from(threshold).clamp(-1.0, 1.0);
    let expected = EMBEDDING_DIM as f64 * threshold.acos() / std::f64::consts::PI;
    // At most every bit: a low threshold reads every note (still exact, just not faster).
    (expected * RADIUS_FACTOR).ceil().min(EMBEDDING_DIM as f64) as i32
}

/// The signature of an embedding as PostgreSQL's `bit(384)` text (`'1'` where the component
/// is > 0), equal to `hikmah_embedding_signature(embedding)` of migration 3.
pub fn signature(embedding: &Embedding) -> String {
    embedding
        .as_slice()
        .iter()
        .map(|&x| if x > 0.0 { '1' } else { '0' })
        .collect()
}

/// Decodes `embedding_f32` (384 big-endian `float4`s, as `float4send` writes them).
pub fn decode_f32(bytes: &[u8]) -> Result<Embedding, InvalidValue> {
    if bytes.len() != EMBEDDING_DIM * 4 {
        return Err(InvalidValue::Embedding(format!(
            "{} bytes, expected {}",
            bytes.len(),
            EMBEDDING_DIM * 4
        )));
    }
    let v = bytes
        .chunks_exact(4)
        .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Embedding::from_stored(v)
}

/// False only when the exact cosine of `a` and `b` is certainly below `threshold`.
///
/// The 8-lane sum differs from the sequential one of [`Embedding::cosine`] only by rounding:
/// each is within `n·u·Σ|aᵢbᵢ|` of the true dot product (n = 384, u = 2⁻²⁴, so 2.3e-5·Σ|aᵢbᵢ|),
/// so they differ by less than 4.6e-5·Σ|aᵢbᵢ|; the margin, 1e-4·(1 + Σ|aᵢbᵢ|), is more than
/// twice that for any vectors, normalised or not.
pub fn may_reach(a: &Embedding, b: &Embedding, threshold: f32) -> bool {
    let (a, b) = (a.as_slice(), b.as_slice());
    let mut dot = [0f32; 8];
    let mut abs = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            let p = ca[k] * cb[k];
            dot[k] += p;
            abs[k] += p.abs();
        }
    }
    let dot: f32 = dot.iter().sum();
    let abs: f32 = abs.iter().sum();
    dot + 1e-4 * (1.0 + abs) >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn pseudo_random(seed: u64) -> Result<Embedding, InvalidValue> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v = (0..EMBEDDING_DIM)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Embedding::normalized(v)
    }

    #[test]
    fn the_radius_grows_as_the_threshold_falls_and_never_exceeds_every_bit() {
        assert!(signature_radius(0.9) < signature_radius(0.8));
        assert!(signature_radius(0.8) < signature_radius(0.7));
        assert_eq!(signature_radius(-1.0), EMBEDDING_DIM as i32);
        // 0.80: expected 78.6 bits apart at the threshold; read up to 1.45x that.
        assert_eq!(signature_radius(0.8), 115);
    }

    #[test]
    fn the_signature_has_a_bit_per_component_set_where_it_is_positive() -> TestResult {
        let mut v = vec![0.0; EMBEDDING_DIM];
        v[0] = 1.0;
        v[2] = -0.5;
        let s = signature(&Embedding::normalized(v)?);
        assert_eq!(s.len(), EMBEDDING_DIM);
        assert!(s.starts_with("1000"));
        assert_eq!(s.matches('1').count(), 1);
        Ok(())
    }

    #[test]
    fn stored_bytes_decode_to_the_same_floats() -> TestResult {
        let e = pseudo_random(7)?;
        let bytes: Vec<u8> = e.as_slice().iter().flat_map(|x| x.to_be_bytes()).collect();
        assert_eq!(decode_f32(&bytes)?, e);
        assert!(decode_f32(&bytes[..12]).is_err());
        Ok(())
    }

    #[test]
    fn the_fast_bound_never_drops_a_note_at_or_above_the_threshold() -> TestResult {
        for seed in 0..2_000u64 {
            let (a, b) = (pseudo_random(seed)?, pseudo_random(seed + 10_000)?);
            let exact = a.cosine(&b);
            // The threshold exactly at the cosine is the hardest case.
            assert!(may_reach(&a, &b, exact), "seed {seed}");
            assert!(!may_reach(&a, &b, exact + 0.01), "seed {seed}: too loose");
        }
        Ok(())
    }
}
