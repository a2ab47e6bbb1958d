-- Pending OAuth 2.0 / OpenID Connect logins: one row per authorization
-- request, consumed (deleted) by its callback, so a state works once.
CREATE TABLE oidc_states (
    digest        TEXT PRIMARY KEY,   -- SHA-256 of the state value
    provider      TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    code_verifier TEXT NOT NULL,      -- PKCE
    link_user_id  TEXT,               -- set when a signed-in user links this login
    expires_at    BIGINT NOT NULL
);
