-- Waiting instead of refusing: a request over the key's max_concurrency waits up to
-- max_wait_ms (ms) for a slot, in arrival order; NULL = refused at once.
ALTER TABLE api_keys ADD COLUMN max_wait_ms BIGINT;
