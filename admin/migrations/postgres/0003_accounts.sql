-- Accounts and billing: users with roles, their sessions and API tokens,
-- groups with price ratios, the balance ledger, redemption and invitation
-- codes, failed logins (for throttling) and the audit log. Same tables on
-- SQLite and Postgres; only BIGINT/TEXT columns; money in integer micro-units.

CREATE TABLE user_groups (
    name            TEXT PRIMARY KEY,
    price_ratio_ppm BIGINT NOT NULL DEFAULT 1000000,   -- 1000000 = x1
    description     TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL
);

INSERT INTO user_groups (name, price_ratio_ppm, description, created_at) VALUES ('default', 1000000, '', 0);

CREATE TABLE users (
    id                     TEXT PRIMARY KEY,
    username               TEXT NOT NULL UNIQUE,
    email                  TEXT UNIQUE,
    password_hash          TEXT,                 -- argon2id PHC string; NULL = no password login
    role                   TEXT NOT NULL,        -- root | admin | user
    group_name             TEXT NOT NULL DEFAULT 'default',
    status                 TEXT NOT NULL DEFAULT 'active',
    max_keys               BIGINT NOT NULL DEFAULT 20,
    max_key_quota_micros   BIGINT,               -- largest quota a self-service key may have; NULL = no cap
    low_balance_micros     BIGINT,               -- low-balance alert threshold; NULL = none
    low_balance_alerted    BIGINT NOT NULL DEFAULT 0,
    budget_period          TEXT NOT NULL DEFAULT 'none',   -- none | daily | monthly
    budget_micros          BIGINT,               -- most spend per period; NULL = none
    invited_by             TEXT,
    account_version        BIGINT NOT NULL DEFAULT 0,      -- bumped with every credit change
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);

CREATE TABLE sessions (
    digest      TEXT PRIMARY KEY,   -- SHA-256 of the cookie value
    user_id     TEXT NOT NULL,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    digest       TEXT NOT NULL UNIQUE,   -- SHA-256 of the token
    prefix_label TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE login_failures (
    subject TEXT NOT NULL,   -- 'user:<name>' or 'addr:<ip>'
    at      BIGINT NOT NULL
);

CREATE INDEX login_failures_subject ON login_failures (subject, at);

CREATE TABLE oidc_links (
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);

-- Every change of a balance. A balance is SUM(amount_micros) of its user.
CREATE TABLE balance_ledger (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,          -- topup | redemption | spend | refund | adjustment | invite_reward
    amount_micros BIGINT NOT NULL,        -- credits positive, spend negative
    actor_id      TEXT,                   -- who (a user id); NULL = the system (usage ingest, sign-up)
    reason        TEXT NOT NULL DEFAULT '',
    request_id    TEXT UNIQUE,            -- spend: the request billed (one entry per request)
    code_id       TEXT,                   -- redemption: the code claimed
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX balance_ledger_user ON balance_ledger (user_id, created_at_ms);

CREATE TABLE redemption_codes (
    id            TEXT PRIMARY KEY,
    batch_id      TEXT NOT NULL,
    digest        TEXT NOT NULL UNIQUE,   -- SHA-256 of the code; the code is shown once, at generation
    label         TEXT NOT NULL,          -- prefix + first characters, for recognising it
    value_micros  BIGINT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'active',   -- active | disabled | redeemed
    expires_at    BIGINT,
    redeemed_by   TEXT,
    redeemed_at   BIGINT,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE INDEX redemption_codes_batch ON redemption_codes (batch_id);

CREATE TABLE invitations (
    code          TEXT PRIMARY KEY,            -- a user's own invitation code
    user_id       TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    actor_id    TEXT NOT NULL,
    action      TEXT NOT NULL,         -- e.g. key.create, user.update, balance.adjust
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    before_json TEXT,
    after_json  TEXT,
    at_ms       BIGINT NOT NULL
);

CREATE INDEX audit_log_time ON audit_log (at_ms);

ALTER TABLE api_keys ADD COLUMN user_id TEXT;
CREATE INDEX api_keys_user ON api_keys (user_id);
ALTER TABLE channels ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
