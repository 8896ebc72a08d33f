-- Install plans, module statements and per-device update policy.

-- Blob address of the module's signed statement (COSE_Sign1, kind "module statement"),
-- checked against the module when it was attached. Only signed modules can be offered.
ALTER TABLE modules ADD COLUMN statement TEXT;

-- How the device reaches the server (`wifi`, `cellular`, `ethernet`) and whether the
-- server may heal it without asking; NULL means the connectivity's default (on for
-- Wi-Fi and Ethernet, off for cellular).
ALTER TABLE devices ADD COLUMN connectivity TEXT NOT NULL DEFAULT 'wifi';
ALTER TABLE devices ADD COLUMN auto_heal INTEGER;

-- An install plan: the modules to send, in order, each with why it is there, computed
-- from the catalog and the device's last Describe before anything is sent.
-- `status`: proposed (nothing sent yet), started (an attempt carries it), superseded.
-- `inventory_key`: the SHA-256 of the described module hashes the plan was computed from;
-- a plan is only started against the inventory it was computed for.
CREATE TABLE plans (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    device         TEXT NOT NULL REFERENCES devices (id),
    platform_id    INTEGER NOT NULL,
    origin         TEXT NOT NULL,
    status         TEXT NOT NULL,
    requested      TEXT NOT NULL,
    steps          TEXT NOT NULL,
    inventory_key  TEXT NOT NULL,
    connectivity   TEXT NOT NULL,
    bytes_total    INTEGER NOT NULL,
    air_bytes      INTEGER NOT NULL,
    attempt        INTEGER REFERENCES attempts (id),
    created_at     INTEGER NOT NULL
);
CREATE INDEX plans_device ON plans (device, id);

-- The plan an attempt carries (NULL for attempts started from a release bundle).
-- `attempts.signed` holds the blob addresses of the signed documents, comma-separated.
ALTER TABLE attempts ADD COLUMN plan_id INTEGER REFERENCES plans (id);
