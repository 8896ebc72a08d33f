-- Idempotent operator calls: a client key (the `Idempotency-Key` header) names the plan a
-- request to start an update made or started, so a retry after a lost response finds the
-- same plan, and through it the same attempt, instead of starting a second one.
CREATE TABLE client_keys (
    key        TEXT PRIMARY KEY,
    device     TEXT NOT NULL,
    plan       INTEGER NOT NULL REFERENCES plans (id),
    created_at INTEGER NOT NULL
);
