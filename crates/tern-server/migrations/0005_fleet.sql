-- Fleets: products, tags, groups, releases, rollouts; and the rule that a device has at
-- most one unfinished update attempt, held by the database itself.

-- Finished attempts stay; a second unfinished one for the same device cannot be stored.
-- (Databases made before this rule held at most one anyway: the server checked it.)
CREATE UNIQUE INDEX attempts_one_unfinished ON attempts (device) WHERE finished = 0;

-- A product: the product id modules carry in their suffix, and the platform of its devices.
CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    platform_id INTEGER NOT NULL,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- A device's place in the fleet: its product, tags (JSON list), the development flag (no
-- rollout touches it), the release it is pinned to, its cellular data budget (bytes per
-- calendar month, UTC).
ALTER TABLE devices ADD COLUMN product_id INTEGER REFERENCES products (id);
ALTER TABLE devices ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE devices ADD COLUMN development INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN pinned_release INTEGER;
ALTER TABLE devices ADD COLUMN budget_bytes INTEGER;

-- A group: a saved filter (JSON) over a product's devices, with its maintenance windows
-- (JSON list of "mon-fri 01:00-05:00") and a data budget for its members.
CREATE TABLE groups (
    name         TEXT PRIMARY KEY,
    product_id   INTEGER NOT NULL REFERENCES products (id),
    filter       TEXT NOT NULL,
    windows      TEXT NOT NULL DEFAULT '[]',
    budget_bytes INTEGER,
    created_at   INTEGER NOT NULL
);

-- A release: an immutable, numbered set of catalog modules (JSON, install order) for a
-- product.
CREATE TABLE releases (
    product_id  INTEGER NOT NULL REFERENCES products (id),
    number      INTEGER NOT NULL,
    modules     TEXT NOT NULL,
    note        TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (product_id, number)
);

-- A rollout of a release to a product (or one of its groups). `engine` is the rollout
-- engine's record (JSON: spec, state, phase); `status` its state's name, for queries.
CREATE TABLE rollouts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id  INTEGER NOT NULL REFERENCES products (id),
    group_name  TEXT,
    release     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    engine      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- A device's progress in a rollout (the engine's member record as JSON), the attempt
-- carrying its update, whether an operator approved it beyond its data budget, and the
-- bytes on the air its update needs (known once its plan was made).
CREATE TABLE rollout_members (
    rollout          INTEGER NOT NULL REFERENCES rollouts (id),
    device           TEXT NOT NULL,
    member           TEXT NOT NULL,
    attempt          INTEGER,
    budget_approved  INTEGER NOT NULL DEFAULT 0,
    needed_bytes     INTEGER,
    PRIMARY KEY (rollout, device)
);
