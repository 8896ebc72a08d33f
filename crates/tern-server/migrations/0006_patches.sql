-- Patches the server made (tern-delta), generated once per (source, target, format) and
-- kept as blobs: a delta from the module with SHA-256 `source` to the module `target`, or,
-- with an empty `source`, `target` compressed (a patch from nothing).
CREATE TABLE patches (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    format INTEGER NOT NULL,
    address TEXT NOT NULL,
    length INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (source, target, format)
);
