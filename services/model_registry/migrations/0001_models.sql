CREATE TABLE models (
    id               uuid PRIMARY KEY,
    job_id           uuid NOT NULL UNIQUE,
    user_id          text NOT NULL,
    name             text NOT NULL,
    base_model       text NOT NULL,
    adapter_path     text,
    method           text NOT NULL,
    lora_r           int,
    lora_alpha       int,
    final_loss       double precision,
    final_eval_loss  double precision,
    training_seconds double precision,
    dataset_rows     int,
    cost_usd         double precision,
    provider         text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX models_user_created ON models (user_id, created_at DESC);
