CREATE TABLE local_workloads (
    job_id          uuid NOT NULL,
    attempt         int NOT NULL,
    state           text NOT NULL,          -- starting | running | ended | cancelled
    bundle_dir      text,
    pid             int,
    pid_started_at  double precision,
    stop_requested  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX local_workloads_live ON local_workloads (state) WHERE state IN ('starting', 'running');
