-- Operator tokens get an expiry and a revocation time; a live token's name is unique (a
-- revoked token keeps its row, and its name may be given to a new token).
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

-- Who caused an event: the name of the operator token whose API call published it (NULL
-- for what devices and the server's own tasks cause).
ALTER TABLE events ADD COLUMN actor TEXT;

-- A device's credential lifecycle: a disabled device cannot connect; a removed device
-- is gone from the API (its row stays for the history its attempts and plans point at).
ALTER TABLE devices ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN removed_at INTEGER;

-- Retention prunes events by age.
CREATE INDEX events_at ON events (at);
