-- Usage messages that could not be delivered: malformed ones, ones the admin
-- refused for good, and ones that exhausted the queue's retries (they arrive
-- through the dead-letter queue edgeway-usage-dlq). Kept so nothing vanishes;
-- POST /internal/usage/dead-letters/replay puts the readable ones back on the
-- usage queue and stamps replayed_at_ms.
CREATE TABLE IF NOT EXISTS usage_dead_letters (
    message_id     TEXT PRIMARY KEY,
    request_id     TEXT,
    body           TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    replayed_at_ms INTEGER
);

CREATE INDEX IF NOT EXISTS usage_dead_letters_pending ON usage_dead_letters (replayed_at_ms, received_at_ms);
