-- A deploy is settled once the scheduler has made a job of it (scheduled_at); until then the relay publishes it
-- again now and then, at most a few times (republished), so that one the scheduler cannot take stops coming back.
ALTER TABLE deploy_requests ADD COLUMN scheduled_at timestamptz, ADD COLUMN republished int NOT NULL DEFAULT 0;
DO $$
BEGIN
    IF to_regclass('jobs') IS NOT NULL THEN
        UPDATE deploy_requests d SET scheduled_at = j.created_at FROM jobs j WHERE j.id = d.job_id;
    END IF;
END $$;
UPDATE deploy_requests SET scheduled_at = created_at
    WHERE scheduled_at IS NULL AND created_at < now() - interval '1 day';
CREATE INDEX deploy_requests_unscheduled ON deploy_requests (created_at) WHERE scheduled_at IS NULL;
