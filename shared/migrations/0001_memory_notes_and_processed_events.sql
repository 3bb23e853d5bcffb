-- Long-term memory notes, one row per distinct note of a user, and the idempotency record of
-- every queue message applied to them (see design.md, "Race-free, exactly-once dedup").

CREATE TABLE memory_notes (
    id              bigserial   PRIMARY KEY,
    user_id         text        NOT NULL,
    content         text        NOT NULL,
    -- hex sha256 of the normalised text: the exact-duplicate key.
    content_hash    text        NOT NULL,
    -- L2-normalised all-MiniLM-L6-v2 sentence embedding, so cosine similarity is a dot product.
    embedding       real[]      NOT NULL
        CONSTRAINT memory_notes_embedding_384
        CHECK (array_ndims(embedding) = 1 AND array_length(embedding, 1) = 384),
    times_seen      integer     NOT NULL DEFAULT 1 CHECK (times_seen >= 1),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    -- The event that first produced this note.
    source_event_id uuid,
    CONSTRAINT memory_notes_user_content_hash_key UNIQUE (user_id, content_hash)
);

CREATE INDEX memory_notes_user_id_idx ON memory_notes (user_id);

CREATE TABLE processed_events (
    event_id         uuid        PRIMARY KEY,
    user_id          text        NOT NULL,
    processed_at     timestamptz NOT NULL DEFAULT now(),
    notes_added      integer     NOT NULL DEFAULT 0 CHECK (notes_added >= 0),
    notes_reinforced integer     NOT NULL DEFAULT 0 CHECK (notes_reinforced >= 0)
);
