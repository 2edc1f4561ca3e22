-- Users' webhooks; the signing secret is sealed with a key derived from TUNEFLEET_SECRET_KEY (endpoint_secrets.py).
CREATE TABLE webhook_endpoints (
    id               uuid PRIMARY KEY,
    user_id          text NOT NULL,
    url              text NOT NULL,
    events           text[] NOT NULL,
    description      text,
    sealed_secret    bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    disabled_at      timestamptz,
    disabled_reason  text
);
CREATE INDEX webhook_endpoints_user ON webhook_endpoints (user_id, created_at);

-- One row per event and endpoint: the unique pair drops a redelivered event.
CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id          text NOT NULL,
    event_type        text NOT NULL,
    body              text NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          int NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    first_attempt_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);

CREATE TABLE webhook_attempts (
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       int NOT NULL,
    at            timestamptz NOT NULL,
    http_status   int,
    error         text,
    response_body text,
    duration_ms   int NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- Where a user's job emails go when a job names no notify_email.
CREATE TABLE notification_addresses (
    user_id     text PRIMARY KEY,
    email       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One email per event, sent and retried like webhooks.
CREATE TABLE email_outbox (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id          text NOT NULL UNIQUE,
    user_id           text NOT NULL,
    recipient         text NOT NULL,
    subject           text NOT NULL,
    body              text NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          int NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    first_attempt_at  timestamptz,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE status = 'pending';
