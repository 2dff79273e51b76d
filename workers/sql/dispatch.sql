-- Takes up to $2 jobs for worker $1 from the tenants in $3 (locked by this transaction, see
-- `candidates.sql`; this statement's snapshot is taken after the lock, so it sees every dispatch and
-- outcome committed before): the slots go one by one to the tenant whose virtual time after taking
-- it is least (each job adds 1 / weight), within each tenant's cap (its running jobs counted); each
-- tenant's jobs come best priority first, then in the order they became ready. Moves the jobs to
-- `running` (a new attempt), and their tenants' queued counts and virtual times with them.
WITH cand AS (
  SELECT s.tenant_id, s.weight, s.vtime,
         least(s.queued, $2, CASE WHEN s.max_in_flight IS NOT NULL THEN s.max_in_flight - (
           SELECT count(*) FROM jobs r WHERE r.tenant_id = s.tenant_id AND r.holder IS NOT NULL)
           END) AS room
  FROM tenant_shares s
  WHERE s.tenant_id = ANY($3) AND s.queued > 0),
-- No tenant is offered more than its weight's part of the slots and one more, which bounds the
-- rows sorted; its virtual time carries whatever it is owed to the next dispatch.
bounded AS (
  SELECT tenant_id, weight, vtime,
         least(room, ceil($2 * weight / sum(weight) OVER ())::int8 + 1) AS room
  FROM cand),
slots AS (
  SELECT c.tenant_id FROM bounded c CROSS JOIN LATERAL generate_series(1, c.room::int) AS i
  ORDER BY c.vtime + i / c.weight LIMIT $2),
quota AS (SELECT tenant_id, count(*) AS n FROM slots GROUP BY tenant_id),
picked AS (
  SELECT p.tenant_id, p.id FROM quota q CROSS JOIN LATERAL (
    SELECT j.tenant_id, j.id FROM jobs j
    WHERE j.tenant_id = q.tenant_id AND j.state = 'queued' AND j.ready_at <= clock_timestamp()
    ORDER BY j.priority DESC, j.ready_at LIMIT q.n FOR UPDATE SKIP LOCKED) p),
claimed AS (
  UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, started_at = clock_timestamp(),
    holder = $1
  FROM picked p WHERE j.tenant_id = p.tenant_id AND j.id = p.id
  RETURNING j.tenant_id, j.id, j.kind, j.policy, j.input, j.tags, j.webhook_url, j.attempts,
    j.priority, j.traceparent, j.redaction, j.cache, j.created_at),
counted AS (SELECT tenant_id, count(*) AS n FROM claimed GROUP BY tenant_id),
moved AS (
  UPDATE tenant_shares s SET queued = greatest(0, s.queued - c.n), vtime = s.vtime + c.n / s.weight
  FROM counted c WHERE s.tenant_id = c.tenant_id)
SELECT tenant_id AS "tenant_id!", id AS "id!", kind AS "kind!", policy AS "policy!",
  input AS "input!", tags AS "tags!", webhook_url, attempts AS "attempts!", priority AS "priority!",
  traceparent, redaction, cache, created_at AS "created_at!"
FROM claimed
