CREATE TABLE users (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id),
    key_hash    text NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE datasets (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id),
    filename    text NOT NULL,
    path        text NOT NULL,
    format      text NOT NULL,
    rows        int NOT NULL,
    stats       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE configurations (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id),
    config      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The outbox of deploy requests: a row is written before the command is published, so an
-- accepted deploy is never lost; unpublished rows are published again by the relay.
CREATE TABLE deploy_requests (
    job_id        uuid PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (id),
    provider      text NOT NULL,
    message       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX deploy_requests_user ON deploy_requests (user_id, created_at DESC);
CREATE INDEX deploy_requests_unpublished ON deploy_requests (created_at) WHERE published_at IS NULL;
