CREATE TABLE lambda_workloads (
    job_id            uuid NOT NULL,
    attempt           int NOT NULL,
    user_id           text NOT NULL,
    state             text NOT NULL,           -- starting | provisioning | running | ended
    resource_id       text,
    cost_per_hour     double precision NOT NULL DEFAULT 0,
    stop_requested    boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    running_since     timestamptz,
    ended_at          timestamptz,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX lambda_workloads_live ON lambda_workloads (state) WHERE state <> 'ended';
