-- What the shared runner needs to time states from their last entry, notice container restarts and stalled
-- training, throttle reports, and take over a provisioning that died between create and record.
ALTER TABLE runpod_workloads
    ADD COLUMN state_since      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN claimed_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN command          jsonb,
    ADD COLUMN workload_started boolean NOT NULL DEFAULT false,
    ADD COLUMN last_uptime_s    double precision,
    ADD COLUMN restarts         int NOT NULL DEFAULT 0,
    ADD COLUMN last_progress    bigint,
    ADD COLUMN progress_at      timestamptz,
    ADD COLUMN reported_at      timestamptz;
