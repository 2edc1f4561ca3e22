-- How much of each attempt's log the runner has published (services/cloud/joblog.py): bytes of train.log, lines.
ALTER TABLE runpod_workloads
    ADD COLUMN log_offset bigint NOT NULL DEFAULT 0,
    ADD COLUMN log_lines  int NOT NULL DEFAULT 0;
