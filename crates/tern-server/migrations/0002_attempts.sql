-- Update attempts: one row per attempt, updated on every state change and progress report.
-- `plan` is the JSON list of modules in install order; `signed` the blob address of the
-- signed release manifest; `sent_record` one bit per KiB already sent (re-sent accounting).
CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    device        TEXT NOT NULL REFERENCES devices (id),
    state         TEXT NOT NULL,
    reason        TEXT,
    reason_code   INTEGER,
    plan          TEXT NOT NULL,
    signed        TEXT NOT NULL,
    bytes_total   INTEGER NOT NULL,
    air_bytes     INTEGER NOT NULL,
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    bytes_sent    INTEGER NOT NULL DEFAULT 0,
    bytes_resent  INTEGER NOT NULL DEFAULT 0,
    requests      INTEGER NOT NULL DEFAULT 0,
    offers_sent   INTEGER NOT NULL DEFAULT 0,
    sent_record   BLOB,
    finished      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX attempts_device ON attempts (device, id);
CREATE INDEX attempts_unfinished ON attempts (finished) WHERE finished = 0;
