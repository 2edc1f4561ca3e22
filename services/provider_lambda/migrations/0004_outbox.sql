-- How an attempt ended is written in the same transaction as its end (shared/outbox.py), so a crash in between
-- cannot leave the job running for ever; spool_pending marks an ended attempt whose spooled metrics are still
-- to be delivered.
CREATE TABLE lambda_outbox (
    event_id      text PRIMARY KEY,
    kind          text NOT NULL,
    message       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX lambda_outbox_unsent ON lambda_outbox (created_at) WHERE published_at IS NULL;
ALTER TABLE lambda_workloads ADD COLUMN spool_pending boolean NOT NULL DEFAULT false;
