-- Models of one name get versions 1, 2, ... per user; each keeps the configuration and data set behind it.
ALTER TABLE models ADD COLUMN version int NOT NULL DEFAULT 1;
ALTER TABLE models ADD COLUMN config jsonb;
ALTER TABLE models ADD COLUMN dataset_id text;
CREATE INDEX models_user_name ON models (user_id, name, version DESC);

-- What each serving is now. engine_key is the key of an engine this registry started (never shown to users).
CREATE TABLE servings (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL,
    model_id      uuid NOT NULL,
    name          text NOT NULL,
    server_type   text NOT NULL,
    state         text NOT NULL,
    reason        text,
    base_url      text,
    engine_model  text,
    engine_key    text,
    details       jsonb NOT NULL DEFAULT '{}',
    findings      jsonb NOT NULL DEFAULT '[]',
    request       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX servings_user ON servings (user_id, created_at DESC);
CREATE UNIQUE INDEX servings_live_name ON servings (user_id, name) WHERE state IN ('starting', 'ready');
