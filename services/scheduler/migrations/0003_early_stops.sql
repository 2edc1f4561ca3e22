-- A stop that arrives before its job exists (the deploy was delayed, or published again): kept, so that the job,
-- once created, is stopped instead of run.
CREATE TABLE early_stops (
    job_id       uuid NOT NULL,
    user_id      text NOT NULL,
    reason       text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, user_id)
);
