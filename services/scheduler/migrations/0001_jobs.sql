CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    user_id          text NOT NULL,
    provider         text NOT NULL,
    name             text NOT NULL,
    config_id        text,
    config           jsonb NOT NULL,
    dataset_path     text NOT NULL,
    dataset_format   text NOT NULL,
    dataset_rows     int NOT NULL,
    provider_options jsonb NOT NULL DEFAULT '{}'::jsonb,
    budget_limit_usd double precision,
    status           text NOT NULL,
    status_reason    text,
    attempt          int NOT NULL DEFAULT 1,
    stop_requested   boolean NOT NULL DEFAULT false,
    result           jsonb,
    cost_usd         double precision NOT NULL DEFAULT 0,
    log_tail         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC);
CREATE INDEX jobs_live ON jobs (status) WHERE status IN ('queued', 'provisioning', 'running', 'preempted');

CREATE TABLE job_history (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    previous        text,
    status          text NOT NULL,
    reason          text,
    source_event_id text NOT NULL UNIQUE,
    status_event_id text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_history_job ON job_history (job_id, id);
