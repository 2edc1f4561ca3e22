-- The price can change while a machine runs (the provider reports it on every poll): the cost billed at earlier
-- prices is kept in cost_accrued_usd, and cost_per_hour accrues from cost_since (the row's creation until then).
ALTER TABLE runpod_workloads
    ADD COLUMN cost_accrued_usd double precision NOT NULL DEFAULT 0,
    ADD COLUMN cost_since       timestamptz;
