CREATE TABLE ingest_batches (
    batch_id     text PRIMARY KEY,
    job_id       uuid NOT NULL,
    points       int NOT NULL,
    predictions  int NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE metric_points (
    job_id       uuid NOT NULL,
    name         text NOT NULL,
    step         int NOT NULL,
    epoch        double precision,
    value        double precision NOT NULL,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (job_id, name, step)
);
CREATE INDEX metric_points_job_step ON metric_points (job_id, step);

CREATE TABLE predictions (
    job_id        uuid NOT NULL,
    step          int NOT NULL,
    sample_index  int NOT NULL,
    epoch         double precision,
    prompt        text NOT NULL,
    generated     text NOT NULL,
    expected      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step, sample_index)
);
