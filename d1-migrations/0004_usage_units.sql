-- The endpoint family of a request (chat, completions, embeddings, ...) and
-- the non-token unit it was billed by, if any (image, audio_second,
-- character, ...) with its count. The column list of a usage row is defined
-- once, in edge/core/src/usage_row.rs.
ALTER TABLE usage_events ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat';
ALTER TABLE usage_events ADD COLUMN unit TEXT;
ALTER TABLE usage_events ADD COLUMN unit_count INTEGER NOT NULL DEFAULT 0;
