-- Every line of each attempt's log, once: numbered from 1 within the attempt as its provider read them, so that a
-- report sent again stores nothing twice. Read by the gateway (GET /api/training/jobs/{id}/logs).
CREATE TABLE job_log_lines (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      int NOT NULL,
    number       int NOT NULL,
    text         text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt, number)
);
