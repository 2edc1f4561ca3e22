ALTER TABLE jobs ADD COLUMN resource_id text;
CREATE INDEX jobs_resource ON jobs (resource_id) WHERE resource_id IS NOT NULL;
