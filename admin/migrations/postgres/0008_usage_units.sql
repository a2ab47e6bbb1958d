-- The usage row's endpoint family and non-token billing unit (columns
-- defined once, in edge/core/src/usage_row.rs, for D1 and this ledger both).
ALTER TABLE usage_ledger ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat';
ALTER TABLE usage_ledger ADD COLUMN unit TEXT;
ALTER TABLE usage_ledger ADD COLUMN unit_count BIGINT NOT NULL DEFAULT 0;
