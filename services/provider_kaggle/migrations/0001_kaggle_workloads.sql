-- The shared runner's tables for Kaggle (the columns of runpod's 0001..0004 together): one row per attempt, and
-- the outbox that publishes how an attempt ended in the same transaction as its end.
CREATE TABLE kaggle_workloads (
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
    state_since       timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz NOT NULL DEFAULT now(),
    command           jsonb,
    workload_started  boolean NOT NULL DEFAULT false,
    last_uptime_s     double precision,
    restarts          int NOT NULL DEFAULT 0,
    last_progress     bigint,
    progress_at       timestamptz,
    reported_at       timestamptz,
    spool_pending     boolean NOT NULL DEFAULT false,
    cost_accrued_usd  double precision NOT NULL DEFAULT 0,
    cost_since        timestamptz,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX kaggle_workloads_live ON kaggle_workloads (state) WHERE state <> 'ended';

CREATE TABLE kaggle_outbox (
    event_id      text PRIMARY KEY,
    kind          text NOT NULL,
    message       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX kaggle_outbox_unsent ON kaggle_outbox (created_at) WHERE published_at IS NULL;
