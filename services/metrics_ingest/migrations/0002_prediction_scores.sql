ALTER TABLE predictions ADD COLUMN scores jsonb NOT NULL DEFAULT '{}'::jsonb;
