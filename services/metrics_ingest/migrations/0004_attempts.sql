-- Points and predictions are kept per attempt of a job: a retry that starts again from step 1 (no checkpoint to
-- resume from) does not have its points dropped as duplicates of the earlier attempt's, and the earlier attempt's
-- stay. metric_attempts holds each attempt's first step: from there on, a later attempt supersedes the points of
-- the earlier ones in the job's curve (they stay readable with ?attempt=N).
ALTER TABLE metric_points ADD COLUMN attempt int NOT NULL DEFAULT 1;
ALTER TABLE metric_points DROP CONSTRAINT metric_points_pkey;
ALTER TABLE metric_points ADD PRIMARY KEY (job_id, name, step, attempt);
ALTER TABLE predictions ADD COLUMN attempt int NOT NULL DEFAULT 1;
ALTER TABLE predictions DROP CONSTRAINT predictions_pkey;
ALTER TABLE predictions ADD PRIMARY KEY (job_id, step, sample_index, attempt);
CREATE TABLE metric_attempts (
    job_id      uuid NOT NULL,
    attempt     int NOT NULL,
    first_step  int NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
INSERT INTO metric_attempts (job_id, attempt, first_step)
SELECT job_id, 1, min(step) FROM (SELECT job_id, step FROM metric_points
                                  UNION ALL SELECT job_id, step FROM predictions) s GROUP BY job_id;
