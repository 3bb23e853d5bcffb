//! Domain types that carry meaning: parsed once at the edge, trusted everywhere after.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Number of dimensions of an all-MiniLM-L6-v2 sentence embedding.
pub const EMBEDDING_DIM: usize = 384;

/// Why a value could not be turned into a domain type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// The user id is empty, too long or has characters outside `[A-Za-z0-9_.@:+=,-]`.
    #[error("user_id must be 1 to {max} characters of A-Z a-z 0-9 _ . @ : + = , -", max = UserId::MAX_LEN)]
    UserId,
    /// An embedding does not have [`EMBEDDING_DIM`] finite components.
    #[error("an embedding must have {EMBEDDING_DIM} finite components, got {0}")]
    Embedding(String),
}

/// A user's identity: 1..=128 characters of `[A-Za-z0-9_.@:+=,-]`. `+ = ,` are there because
/// IAM role session names may hold them, and a role caller's id is `AROA…:<session name>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Longest accepted user id, in characters.
    pub const MAX_LEN: usize = 128;

    /// Parses a user id, rejecting anything outside the contract.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'_' | b'.' | b'@' | b':' | b'-' | b'+' | b'=' | b',')
            });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidValue::UserId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

/// The idempotency key of one completed elaboration (a UUID v7 when we mint it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new, time-ordered event id.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

/// A memory note's database id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NoteId(pub i64);

impl fmt::Display for NoteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An L2-normalised sentence embedding of [`EMBEDDING_DIM`] components; cosine is a dot product.
#[derive(Clone, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises a raw vector to unit length (a zero vector stays zero).
    pub fn normalized(mut v: Vec<f32>) -> Result<Self, InvalidValue> {
        if v.len() != EMBEDDING_DIM || v.iter().any(|x| !x.is_finite()) {
            return Err(InvalidValue::Embedding(format!("{} components", v.len())));
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(Self(v))
    }

    /// Wraps a vector already normalised (as stored in the database), checking its length.
    pub fn from_stored(v: Vec<f32>) -> Result<Self, InvalidValue> {
        if v.len() != EMBEDDING_DIM || v.iter().any(|x| !x.is_finite()) {
            return Err(InvalidValue::Embedding(format!("{} components", v.len())));
        }
        Ok(Self(v))
    }

    /// Cosine similarity with another embedding (both are unit length, so a dot product).
    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    /// The components.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

impl fmt::Debug for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Embedding[{}; {:?}..]",
            self.0.len(),
            &self.0[..self.0.len().min(3)]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_accepts_the_contract_alphabet_and_rejects_the_rest() {
        assert!(UserId::parse("u-123_a.b@c:d").is_ok());
        // An IAM role caller whose session name uses every character IAM allows in one.
        assert!(UserId::parse("AROAEXAMPLEID:jane+ops=admin,eu@corp.example_1-2").is_ok());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
        assert!(UserId::parse("with space").is_err());
        assert!(UserId::parse("ümlaut").is_err());
    }

    #[test]
    fn embedding_is_normalised_and_cosine_of_itself_is_one(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let e = Embedding::normalized(vec![2.0; EMBEDDING_DIM])?;
        assert!((e.cosine(&e) - 1.0).abs() < 1e-5);
        assert!(Embedding::normalized(vec![1.0; 3]).is_err());
        Ok(())
    }
}
