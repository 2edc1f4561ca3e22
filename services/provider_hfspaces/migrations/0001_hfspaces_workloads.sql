-- The shared runner's tables (as runpod's 0001..0004 together): one row per attempt, and the outbox of its end.
CREATE TABLE hfspaces_workloads (
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
CREATE INDEX hfspaces_workloads_live ON hfspaces_workloads (state) WHERE state <> 'ended';

CREATE TABLE hfspaces_outbox (
    event_id      text PRIMARY KEY,
    kind          text NOT NULL,
    message       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX hfspaces_outbox_unsent ON hfspaces_outbox (created_at) WHERE published_at IS NULL;

-- A Space's id is the user's space_name, not TuneFleet's resource name: this maps each attempt's resource name
-- to its Space, written before the create, so that find, list_own and reconciliation can reach it. The Space's
-- variable TUNEFLEET_RESOURCE says which attempt it runs now (a retry of a job reuses its Space).
CREATE TABLE hfspaces_spaces (
    resource_name     text PRIMARY KEY,
    space_id          text NOT NULL,
    account           text NOT NULL DEFAULT '',  -- the Hub account whose token created it: reconciliation acts
                                                 -- with that account's token only
    delete_on_finish  boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz
);
CREATE INDEX hfspaces_spaces_by_space ON hfspaces_spaces (space_id);
