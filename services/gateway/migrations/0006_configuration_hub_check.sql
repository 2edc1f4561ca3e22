-- What the Hub said of a configuration's base model when it was saved (shared/hub_models.py): the resolved revision,
-- architecture, parameter count and gating, or that the check was skipped; NULL for a local model folder.
ALTER TABLE configurations ADD COLUMN hub_check jsonb;
