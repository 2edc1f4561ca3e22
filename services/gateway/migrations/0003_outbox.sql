-- Commands other than deploys (stop requests) are written here before they are published (shared/outbox.py).
CREATE TABLE gateway_outbox (
    event_id      text PRIMARY KEY,
    kind          text NOT NULL,
    message       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX gateway_outbox_unsent ON gateway_outbox (created_at) WHERE published_at IS NULL;
