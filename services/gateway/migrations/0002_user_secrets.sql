-- Provider credentials, sealed with the secrets public key; only provider services can open them.
CREATE TABLE user_secrets (
    user_id     text NOT NULL REFERENCES users (id),
    provider    text NOT NULL,
    sealed      bytea NOT NULL,
    fields      text[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider)
);
