-- A configuration may be replaced (PUT) while no unfinished job uses it.
ALTER TABLE configurations ADD COLUMN updated_at timestamptz;
UPDATE configurations SET updated_at = created_at;
ALTER TABLE configurations ALTER COLUMN updated_at SET NOT NULL, ALTER COLUMN updated_at SET DEFAULT now();
CREATE INDEX configurations_user_created ON configurations (user_id, created_at DESC);
CREATE INDEX datasets_user_created ON datasets (user_id, created_at DESC);
