-- The usage row's new columns (edgeway_core::usage_row): the public model
-- that served when it is not the one asked for, and the attempts as JSON.
ALTER TABLE usage_ledger ADD COLUMN served_model TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_ledger ADD COLUMN attempts TEXT NOT NULL DEFAULT '';
