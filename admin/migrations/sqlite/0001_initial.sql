-- edgeway admin schema, SQLite. Keep in step with ../postgres/0001_initial.sql:
-- the same tables, columns and meaning; only BIGINT/TEXT column types.
-- Money is integer micro-units; times are unix seconds (`*_at`) or ms (`*_ms`);
-- booleans are 0/1; lists are JSON text.

CREATE TABLE api_keys (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    owner            TEXT NOT NULL DEFAULT '',
    group_name       TEXT NOT NULL DEFAULT 'default',
    digest           TEXT NOT NULL UNIQUE,      -- SHA-256 hex of the key; the key itself is never stored
    key_prefix_label TEXT NOT NULL,             -- first 10 characters, e.g. `sk-ew-AbCd`
    status           TEXT NOT NULL DEFAULT 'active',
    expires_at       BIGINT,
    allowed_models   TEXT,                      -- JSON array or NULL (= every model)
    quota_micros     BIGINT,
    rpm              BIGINT,
    tpm              BIGINT,
    max_concurrency  BIGINT,
    allowed_ips      TEXT,                      -- JSON array of CIDRs or NULL (= any)
    version          BIGINT NOT NULL DEFAULT 1,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE channels (
    id             TEXT PRIMARY KEY NOT NULL,
    provider       TEXT NOT NULL,
    base_url       TEXT,
    api_key        TEXT,
    api_key_secret TEXT,
    timeout_ms     BIGINT,
    enabled        BIGINT NOT NULL DEFAULT 1,
    mock           TEXT,                        -- JSON MockOptions or NULL
    created_at     BIGINT NOT NULL
);

CREATE TABLE models (
    name                 TEXT PRIMARY KEY NOT NULL,
    price_input          BIGINT NOT NULL DEFAULT 0,   -- micros per million tokens
    price_output         BIGINT NOT NULL DEFAULT 0,
    price_cache_read     BIGINT,
    price_cache_write_5m BIGINT,
    price_cache_write_1h BIGINT,
    price_per_request    BIGINT NOT NULL DEFAULT 0,   -- micros per request
    owned_by             TEXT,
    created_at           BIGINT NOT NULL
);

CREATE TABLE model_targets (
    model          TEXT NOT NULL,
    channel        TEXT NOT NULL,
    upstream_model TEXT,
    priority       BIGINT NOT NULL DEFAULT 0,
    weight         BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (model, channel)
);

CREATE INDEX model_targets_channel ON model_targets (channel);

-- Single-row table holding the routing config version (monotonic).
CREATE TABLE routing_state (
    id      BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);

INSERT INTO routing_state (id, version) VALUES (1, 0);

CREATE TABLE usage_ledger (
    request_id       TEXT PRIMARY KEY NOT NULL,
    key_digest       TEXT NOT NULL,
    owner            TEXT NOT NULL,
    model            TEXT NOT NULL,
    upstream_model   TEXT NOT NULL,
    channel          TEXT NOT NULL,
    provider         TEXT NOT NULL,
    input_uncached   BIGINT NOT NULL,
    cache_read       BIGINT NOT NULL,
    cache_write_5m   BIGINT NOT NULL,
    cache_write_1h   BIGINT NOT NULL,
    output_tokens    BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost_micros      BIGINT NOT NULL,
    status           BIGINT NOT NULL,
    outcome          TEXT NOT NULL,
    usage_source     TEXT NOT NULL,
    stream           BIGINT NOT NULL,
    latency_ms       BIGINT NOT NULL,
    ttft_ms          BIGINT,
    created_at_ms    BIGINT NOT NULL,
    ingested_at_ms   BIGINT NOT NULL
);

CREATE INDEX usage_ledger_key_time ON usage_ledger (key_digest, created_at_ms);
CREATE INDEX usage_ledger_time ON usage_ledger (created_at_ms);
