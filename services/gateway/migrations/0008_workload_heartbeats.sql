-- What remote workloads report between start and end, kept where every gateway replica writes it and every
-- provider replica reads it (services/cloud/heartbeats.py): their last stage and progress, and their whole log
-- as the chunks the heartbeats brought, in order. A provider's runner copies them into the attempt's folder.
CREATE TABLE workload_heartbeats (
    job_id      uuid NOT NULL,
    attempt     integer NOT NULL,
    progress    jsonb NOT NULL DEFAULT '{}',
    log_tail    text,
    log_size    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE workload_log_chunks (
    job_id   uuid NOT NULL,
    attempt  integer NOT NULL,
    start    bigint NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (job_id, attempt, start)
);
