-- The right to be forgotten (DELETE /hikmah/memory, design.md "Memory routes").
--
-- Forgetting a user deletes their notes and processed_events rows and records here when it
-- happened. The consumer acknowledges, without storing anything, every event of that user
-- created at or before `forgotten_at`: a redelivered or still-queued old event cannot bring a
-- note back, while the user's later elaborations are remembered again. Only the user id and
-- the time are kept.
CREATE TABLE forgotten_users (
    user_id      text        PRIMARY KEY,
    forgotten_at timestamptz NOT NULL
);

-- GET /hikmah/memory pages a user's notes newest first by (created_at, id).
CREATE INDEX memory_notes_user_created_idx ON memory_notes (user_id, created_at DESC, id DESC);

-- Forgetting deletes a user's processed_events rows (the table grows with every event).
CREATE INDEX processed_events_user_id_idx ON processed_events (user_id);
