-- A model's exports (merged, GGUF), made by whichever gateway replica was asked (services/gateway/exports.py):
-- their state here, their files in the object store, so that every replica lists and gives them. A running
-- export's replica renews heartbeat_at; one not renewed for a minute was left by a replica that stopped.
CREATE TABLE model_exports (
    model_id      uuid NOT NULL,
    key           text NOT NULL,
    format        text NOT NULL,
    quantize      text,
    status        text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    error         text,
    run_id        text NOT NULL,
    size_bytes    bigint,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (model_id, key)
);
