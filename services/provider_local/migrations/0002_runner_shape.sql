-- The local provider runs under the shared runner: its table takes the shape of the cloud providers' tables.
-- A trainer process is recorded as resource_id '<pid>:<process start time>'.
ALTER TABLE local_workloads
    ADD COLUMN user_id          text NOT NULL DEFAULT '',
    ADD COLUMN resource_id      text,
    ADD COLUMN cost_per_hour    double precision NOT NULL DEFAULT 0,
    ADD COLUMN running_since    timestamptz,
    ADD COLUMN ended_at         timestamptz,
    ADD COLUMN state_since      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN claimed_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN command          jsonb,
    ADD COLUMN workload_started boolean NOT NULL DEFAULT false,
    ADD COLUMN last_uptime_s    double precision,
    ADD COLUMN restarts         int NOT NULL DEFAULT 0,
    ADD COLUMN last_progress    bigint,
    ADD COLUMN progress_at      timestamptz,
    ADD COLUMN reported_at      timestamptz;
UPDATE local_workloads SET resource_id = pid::text || ':' || pid_started_at::text WHERE pid IS NOT NULL;
UPDATE local_workloads SET state = 'ended', ended_at = updated_at WHERE state = 'cancelled';
DROP INDEX local_workloads_live;
ALTER TABLE local_workloads DROP COLUMN bundle_dir, DROP COLUMN pid, DROP COLUMN pid_started_at,
    DROP COLUMN updated_at;
CREATE INDEX local_workloads_live ON local_workloads (state) WHERE state <> 'ended';
