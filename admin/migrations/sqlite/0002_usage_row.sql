-- The usage row's columns are defined once, in edge/core/src/usage_row.rs,
-- for D1 and this ledger both: the token columns take D1's names, and every
-- row says which user paid, in which group, at which price ratio.
ALTER TABLE usage_ledger RENAME COLUMN input_uncached TO input_uncached_tokens;
ALTER TABLE usage_ledger RENAME COLUMN cache_read TO cache_read_tokens;
ALTER TABLE usage_ledger RENAME COLUMN cache_write_5m TO cache_write_5m_tokens;
ALTER TABLE usage_ledger RENAME COLUMN cache_write_1h TO cache_write_1h_tokens;
ALTER TABLE usage_ledger ADD COLUMN user_id TEXT;
ALTER TABLE usage_ledger ADD COLUMN group_name TEXT NOT NULL DEFAULT 'default';
ALTER TABLE usage_ledger ADD COLUMN price_ratio_ppm BIGINT NOT NULL DEFAULT 1000000;
CREATE INDEX usage_ledger_user_time ON usage_ledger (user_id, created_at_ms);
