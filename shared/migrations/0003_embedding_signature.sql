-- A message costs about the same whatever the size of the user's memory (issue #11).
--
-- The semantic dedup used to read every `real[384]` embedding of the user (PostgreSQL sends a
-- binary array with a length word per element, and parses it back): at 10,000 notes that was
-- most of a message's cost. Two columns derived from `embedding` let the store read only the
-- notes that can matter:
-- - `signature`: one bit per component, set when the component is > 0. The Hamming distance
--   of two signatures (`bit_count(a # b)`, built in since PostgreSQL 14) tracks the angle of the
--   embeddings, so PostgreSQL itself drops the notes far from every candidate; the store's
--   radius keeps every note at or above the threshold (tested at recall 1.0);
-- - `embedding_f32`: the same 384 floats as `embedding`, big-endian IEEE 754 `float4` bytes
--   (as `float4send` writes them), so the notes that are compared arrive as one memcpy-able
--   value and the cosine is computed on exactly the stored floats.
-- `embedding real[384]` stays the source of truth (design.md's contract): both columns are
-- GENERATED from it, so every writer (consumer, import, anything added later) keeps them right,
-- and adding them here computes them for every existing row.
-- Both wide columns live out of line (TOAST), so the heap scanned for signatures stays narrow.

CREATE FUNCTION hikmah_embedding_signature(embedding real[]) RETURNS bit(384)
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (SELECT string_agg(CASE WHEN x > 0 THEN '1' ELSE '0' END, '' ORDER BY i)::bit(384)
            FROM unnest(embedding) WITH ORDINALITY AS t(x, i));

CREATE FUNCTION hikmah_embedding_f32(embedding real[]) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (SELECT string_agg(float4send(x), ''::bytea ORDER BY i)
            FROM unnest(embedding) WITH ORDINALITY AS t(x, i));

ALTER TABLE memory_notes ALTER COLUMN embedding SET STORAGE EXTERNAL;
ALTER TABLE memory_notes SET (toast_tuple_target = 512);

ALTER TABLE memory_notes
    ADD COLUMN signature bit(384)
        GENERATED ALWAYS AS (hikmah_embedding_signature(embedding)) STORED,
    ADD COLUMN embedding_f32 bytea
        GENERATED ALWAYS AS (hikmah_embedding_f32(embedding)) STORED;

ALTER TABLE memory_notes ALTER COLUMN embedding_f32 SET STORAGE EXTERNAL;
