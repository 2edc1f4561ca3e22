-- A batch id is unique within its job, so trainers may number their batches (0, 1, 2, ...) without
-- one job's batch hiding another's.
ALTER TABLE ingest_batches DROP CONSTRAINT ingest_batches_pkey;
ALTER TABLE ingest_batches ADD PRIMARY KEY (job_id, batch_id);

-- Every read is served by the primary key (job_id, name, step): per metric ranges, a skip scan for the
-- names, and a merge of the metrics' step orders for pages. A second index on (job_id, step) cost about
-- a quarter of PostgreSQL's work per inserted point.
DROP INDEX metric_points_job_step;
