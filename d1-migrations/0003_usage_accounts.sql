-- The user whose balance paid for a request, the key's pricing group and the
-- group's price ratio (parts per million) applied to cost_micros. The column
-- list of a usage row is defined once, in edge/core/src/usage_row.rs.
ALTER TABLE usage_events ADD COLUMN user_id TEXT;
ALTER TABLE usage_events ADD COLUMN group_name TEXT NOT NULL DEFAULT 'default';
ALTER TABLE usage_events ADD COLUMN price_ratio_ppm INTEGER NOT NULL DEFAULT 1000000;
