-- Periodic key budgets: a key's lifetime quota (enforced exactly at the
-- edge) is moved at each period start to the spend booked before it plus
-- the period's budget, so the key may spend budget_micros per period.
CREATE TABLE key_budgets (
    key_id          TEXT PRIMARY KEY,
    period          TEXT NOT NULL,      -- daily | monthly
    budget_micros   BIGINT NOT NULL,
    period_start_ms BIGINT NOT NULL     -- start of the period last applied (0 = none yet)
);
