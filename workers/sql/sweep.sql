-- Jobs whose worker is gone (its lease ended) go back to `queued`, ready now; the next dispatch
-- makes them a new attempt, which fences the old one's outcome. Returns them by tenant.
WITH lost AS (
  UPDATE jobs j SET state = 'queued', ready_at = now(), holder = NULL
  WHERE j.holder IS NOT NULL AND j.state = 'running'
    AND NOT EXISTS (SELECT 1 FROM worker_leases w WHERE w.worker_id = j.holder AND w.expires_at > now())
  RETURNING j.tenant_id)
SELECT tenant_id AS "tenant_id!", count(*) AS "jobs!" FROM lost GROUP BY tenant_id
