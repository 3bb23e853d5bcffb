-- Lossless merges: a candidate judged a semantic duplicate of a note is kept as a variant of it
-- (bounded per note by the consumer, NOTE_VARIANTS_MAX), so a wrong merge can be split back out
-- (`hikmah memory split`). Variants never enter the prompt; deleting a note deletes its variants.
-- Purely additive: existing notes are untouched.

CREATE TABLE note_variants (
    id          bigserial   PRIMARY KEY,
    note_id     bigint      NOT NULL REFERENCES memory_notes (id) ON DELETE CASCADE,
    content     text        NOT NULL,
    -- The event the candidate came from.
    event_id    uuid,
    -- Cosine between the variant and the note it was merged into.
    cosine      real        NOT NULL,
    -- Why it was judged a duplicate (`semantic_match`, `judge_same`).
    reason      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX note_variants_note_id_idx ON note_variants (note_id, id DESC);
