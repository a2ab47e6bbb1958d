-- Channel settings beyond the first columns, as JSON (the admin's
-- ChannelSettings: time limits per phase; later fields default when absent).
ALTER TABLE channels ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
