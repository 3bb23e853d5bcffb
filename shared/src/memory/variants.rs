//! Undoing a merge: a variant (a candidate once judged a duplicate of a note, see the store)
//! becomes a note of its own again.

use crate::db::Db;
use crate::memory::dedup::embedding_text;
use crate::memory::normalize::content_hash;
use crate::memory::service::TextEmbedder;
use crate::memory::store::USER_LOCK_SEED;
use crate::memory::MemoryError;
use crate::types::{NoteId, UserId};

/// Why a variant could not be split out.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The user has no such variant (never, or already split or forgotten).
    #[error("user {user} has no variant {variant} (see: hikmah memory list --user {user} --json)")]
    NotFound {
        /// The user.
        user: UserId,
        /// The variant id asked for.
        variant: i64,
    },
    /// The variant's text already is a note of the user (equal after normalisation).
    #[error("variant {variant} already is note {note} of the user (equal after normalisation); nothing to split")]
    AlreadyANote {
        /// The variant id.
        variant: i64,
        /// The existing note.
        note: NoteId,
    },
    /// The database or the embedder failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

fn db(err: tokio_postgres::Error) -> MemoryError {
    MemoryError::Db(err.into())
}

/// Turns variant `variant` of `user` into a new note (embedded as the consumer embeds notes) and
/// deletes the variant, in one transaction under the user's lock; returns the new note's id.
pub async fn split_variant(
    store: &Db,
    embedder: &dyn TextEmbedder,
    user: &UserId,
    variant: i64,
) -> Result<NoteId, SplitError> {
    let content: Option<String> = store
        .run(|conn| async move {
            let row = conn
                .query_opt(
                    "SELECT v.content FROM note_variants v JOIN memory_notes n ON n.id = v.note_id \
                     WHERE v.id = $1 AND n.user_id = $2",
                    &[&variant, &user.as_str()],
                )
                .await
                .map_err(db)?;
            Ok::<_, MemoryError>(row.map(|r| r.get(0)))
        })
        .await?;
    let not_found = || SplitError::NotFound {
        user: user.clone(),
        variant,
    };
    let content = content.ok_or_else(not_found)?;
    let embedding = embedder
        .embed_texts(vec![embedding_text(&content)])
        .await?
        .pop()
        .ok_or(MemoryError::EmbedCount {
            expected: 1,
            got: 0,
        })?;
    let hash = content_hash(&content);

    let result = store
        .run(|mut conn| {
            let (hash, embedding) = (&hash, &embedding);
            async move {
                let tx = conn.transaction().await.map_err(db)?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
                    &[&user.as_str(), &USER_LOCK_SEED],
                )
                .await
                .map_err(db)?;
                // Re-read under the lock: the variant may have been split, forgotten or rotated out.
                let row = tx
                    .query_opt(
                        "SELECT v.content, v.event_id FROM note_variants v \
                         JOIN memory_notes n ON n.id = v.note_id \
                         WHERE v.id = $1 AND n.user_id = $2 FOR UPDATE OF v",
                        &[&variant, &user.as_str()],
                    )
                    .await
                    .map_err(db)?;
                let Some(row) = row else {
                    return Ok(Err(None));
                };
                let (text, event): (String, Option<uuid::Uuid>) = (row.get(0), row.get(1));
                if content_hash(&text) != *hash {
                    return Ok(Err(None));
                }
                let existing = tx
                    .query_opt(
                        "SELECT id FROM memory_notes WHERE user_id = $1 AND content_hash = $2",
                        &[&user.as_str(), hash],
                    )
                    .await
                    .map_err(db)?;
                if let Some(r) = existing {
                    return Ok(Err(Some(NoteId(r.get(0)))));
                }
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO memory_notes (user_id, content, content_hash, embedding, source_event_id) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING id",
                        &[&user.as_str(), &text, hash, &embedding.as_slice(), &event],
                    )
                    .await
                    .map_err(db)?
                    .get(0);
                tx.execute("DELETE FROM note_variants WHERE id = $1", &[&variant])
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok::<_, MemoryError>(Ok(NoteId(id)))
            }
        })
        .await?;
    match result {
        Ok(id) => Ok(id),
        Err(None) => Err(not_found()),
        Err(Some(note)) => Err(SplitError::AlreadyANote { variant, note }),
    }
}
