-- A job's budget controls (shared/budget.py) and what the scheduler has done about them.
ALTER TABLE jobs ADD COLUMN alert_threshold_pct double precision;
ALTER TABLE jobs ADD COLUMN auto_stop_on_budget boolean NOT NULL DEFAULT true;
ALTER TABLE jobs ADD COLUMN max_duration_hours double precision;
ALTER TABLE jobs ADD COLUMN notify_email text;
-- When each budget alert was published (once per kind and job).
ALTER TABLE jobs ADD COLUMN threshold_alerted_at timestamptz;
ALTER TABLE jobs ADD COLUMN limit_alerted_at timestamptz;
-- When the job first asked for a machine: max_duration_hours counts from here.
ALTER TABLE jobs ADD COLUMN clock_started_at timestamptz;
-- Steps done over steps planned, as the newest report said (0..1).
ALTER TABLE jobs ADD COLUMN progress double precision;
-- Automatic placement: the offers tried in order, the one in use, and why each other was passed over.
ALTER TABLE jobs ADD COLUMN placement jsonb;
-- What the job's ended attempts cost: cost_usd is this plus the current attempt's cost (a provider reports the
-- cost of the attempt it runs), so that a budget counts every attempt.
ALTER TABLE jobs ADD COLUMN attempts_cost_usd double precision NOT NULL DEFAULT 0;
