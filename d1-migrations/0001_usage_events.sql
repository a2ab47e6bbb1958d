-- One row per request, written by the queue consumer, idempotent on request_id.
-- Token buckets are disjoint (see edge/core/src/usage.rs); money is integer micro-units.
CREATE TABLE IF NOT EXISTS usage_events (
    request_id            TEXT PRIMARY KEY,
    key_digest            TEXT    NOT NULL,
    owner                 TEXT    NOT NULL DEFAULT '',
    model                 TEXT    NOT NULL,
    upstream_model        TEXT    NOT NULL DEFAULT '',
    channel               TEXT    NOT NULL DEFAULT '',
    provider              TEXT    NOT NULL DEFAULT '',
    input_uncached_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_micros           INTEGER NOT NULL DEFAULT 0,
    status                INTEGER NOT NULL,
    outcome               TEXT    NOT NULL,
    usage_source          TEXT    NOT NULL,
    stream                INTEGER NOT NULL DEFAULT 0,
    latency_ms            INTEGER NOT NULL DEFAULT 0,
    ttft_ms               INTEGER,
    created_at_ms         INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS usage_events_by_key_time ON usage_events (key_digest, created_at_ms);
CREATE INDEX IF NOT EXISTS usage_events_by_time ON usage_events (created_at_ms);
