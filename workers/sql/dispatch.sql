-- Takes up to $2 jobs for worker $3 from the tenants in $1 (their rows locked by this transaction):
-- the slots go one by one to the tenant whose virtual time after taking it is least (each job adds
-- 1 / weight), within each tenant's cap; each tenant's jobs come best priority first, then in the
-- order they became ready. Moves the jobs to `running` (a new attempt) and their tenants' counts
-- and virtual times with them. Runs as its own statement after the lock, so it sees every change
-- committed before the lock was granted.
WITH cand AS (
  SELECT tenant_id, weight, vtime,
         least(queued, coalesce(max_in_flight - running, queued), $2) AS room
  FROM tenant_shares
  WHERE tenant_id = ANY($1) AND queued > 0 AND next_ready_at <= clock_timestamp()
    AND (max_in_flight IS NULL OR running < max_in_flight)),
slots AS (
  SELECT c.tenant_id FROM cand c CROSS JOIN LATERAL generate_series(1, c.room) AS i
  ORDER BY c.vtime + i / c.weight, c.tenant_id LIMIT $2),
quota AS (SELECT tenant_id, count(*) AS n FROM slots GROUP BY tenant_id),
picked AS (
  SELECT p.tenant_id, p.id FROM quota q CROSS JOIN LATERAL (
    SELECT j.tenant_id, j.id FROM jobs j
    WHERE j.tenant_id = q.tenant_id AND j.state = 'queued' AND j.ready_at <= clock_timestamp()
    ORDER BY j.priority DESC, j.ready_at LIMIT q.n FOR UPDATE SKIP LOCKED) p),
claimed AS (
  UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, started_at = clock_timestamp(),
    holder = $3
  FROM picked p WHERE j.tenant_id = p.tenant_id AND j.id = p.id
  RETURNING j.tenant_id, j.id, j.kind, j.policy, j.input, j.tags, j.webhook_url, j.attempts,
    j.priority, j.traceparent, j.redaction, j.created_at),
counted AS (SELECT tenant_id, count(*) AS n FROM claimed GROUP BY tenant_id),
moved AS (
  UPDATE tenant_shares s SET queued = greatest(0, s.queued - c.n), running = s.running + c.n,
    vtime = s.vtime + c.n / s.weight
  FROM counted c WHERE s.tenant_id = c.tenant_id)
SELECT tenant_id AS "tenant_id!", id AS "id!", kind AS "kind!", policy AS "policy!",
  input AS "input!", tags AS "tags!", webhook_url, attempts AS "attempts!", priority AS "priority!",
  traceparent, redaction, created_at AS "created_at!"
FROM claimed
