-- Operator API tokens: only the SHA-256 of each token is kept.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The module catalog. `sha256` is the content address of the uploaded file in the blob store.
CREATE TABLE modules (
    sha256         TEXT PRIMARY KEY,
    filename       TEXT,
    format         TEXT NOT NULL,
    platform_id    INTEGER NOT NULL,
    function       INTEGER NOT NULL,
    module_index   INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    module_sha256  TEXT,
    integrity      TEXT NOT NULL,
    dependencies   TEXT NOT NULL,
    start_address  INTEGER NOT NULL,
    uploaded_at    INTEGER NOT NULL
);

-- Devices. Only the SHA-256 of each device secret is kept. `inventory` is the JSON of the
-- device's last Describe.
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    platform_id  INTEGER NOT NULL,
    secret_hash  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen    INTEGER,
    described_at INTEGER,
    inventory    TEXT
);

-- Every event published on the event stream, in order; also each device's history.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    device  TEXT,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL
);
CREATE INDEX events_device ON events (device, id);
