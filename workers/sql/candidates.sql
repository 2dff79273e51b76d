-- Locks the tenants a dispatch of $1 slots offers them to: those with queued jobs that are ready,
-- below their in-flight cap (their running jobs counted), least virtual time first, at most $1 of
-- them, skipping tenants another dispatch holds (it is serving them; a dispatch never waits).
SELECT s.tenant_id FROM tenant_shares s
WHERE s.queued > 0 AND s.next_ready_at <= clock_timestamp()
  AND CASE WHEN s.max_in_flight IS NULL THEN true ELSE
         (SELECT count(*) FROM jobs r WHERE r.tenant_id = s.tenant_id AND r.holder IS NOT NULL)
         < s.max_in_flight END
ORDER BY s.vtime LIMIT $1
FOR NO KEY UPDATE SKIP LOCKED
