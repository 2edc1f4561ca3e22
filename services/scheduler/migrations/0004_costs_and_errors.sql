-- The hourly price of the job's current resource, as its provider reports it (0 for local jobs).
ALTER TABLE jobs ADD COLUMN cost_per_hour double precision;

-- Why each attempt failed or was preempted, as the trainer or the provider said it: kept per job, whatever
-- attempts follow (the job's result holds only the last).
CREATE TABLE job_errors (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt         int NOT NULL,
    phase           text NOT NULL,
    error_type      text NOT NULL,
    error_message   text NOT NULL,
    error_field     text,
    traceback       text,
    occurred_at     timestamptz NOT NULL,
    source_event_id text NOT NULL UNIQUE,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_errors_job ON job_errors (job_id, id);
