-- The SSH host key each instance showed at first contact; every later connection must show the same one.
CREATE TABLE lambda_host_keys (
    instance_id  text PRIMARY KEY,
    key_type     text NOT NULL,
    key_base64   text NOT NULL,
    pinned_at    timestamptz NOT NULL DEFAULT now()
);
