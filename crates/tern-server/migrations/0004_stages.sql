-- Device OS upgrades that fit the device: security counters in the catalog, and plans
-- and attempts split into stages (one offer and one reboot each).

-- The security counter of the module's signed statement (0 without one).
ALTER TABLE modules ADD COLUMN security_counter INTEGER NOT NULL DEFAULT 0;

-- The plan's stages as JSON: per stage its module bytes, bytes on the air and what the
-- device runs after it. Each step in `steps` names its stage.
ALTER TABLE plans ADD COLUMN stages TEXT NOT NULL DEFAULT '[]';

-- The attempt's stages (copied from its plan), the stage in flight, and the transfer
-- counters of the stages already finished (JSON), which `bytes_sent` etc. include.
ALTER TABLE attempts ADD COLUMN stages TEXT NOT NULL DEFAULT '[]';
ALTER TABLE attempts ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN stage_base TEXT;

-- A plan made from a release bundle offers the bundle's signed manifest (blob address).
ALTER TABLE plans ADD COLUMN manifest TEXT;
