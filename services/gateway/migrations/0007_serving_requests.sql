-- Serving deploys as the gateway accepted them (POST /api/training/deploy); the model registry's servings table
-- holds what became of each (same id). The command itself travels through gateway_outbox.
CREATE TABLE serving_requests (
    id                 uuid PRIMARY KEY,
    user_id            text NOT NULL,
    model_id           uuid NOT NULL,
    name               text NOT NULL,
    server_type        text NOT NULL,
    findings           jsonb NOT NULL DEFAULT '[]',
    created_at         timestamptz NOT NULL DEFAULT now(),
    stop_requested_at  timestamptz
);
CREATE INDEX serving_requests_user ON serving_requests (user_id, created_at DESC);
