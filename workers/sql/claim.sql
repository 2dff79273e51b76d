-- One statement: new ids are inserted as running (attempt 1); ids already known are taken over
-- when queued, or running with a redelivered message. Both sub-statements see the same snapshot,
-- so the update never sees a row this insert adds; `state` is that of every row neither touched
-- (terminal: finished; else busy).
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                       $7::text[], $8::bool[])
    AS t(tenant_id, id, kind, policy, input, tags, webhook_url, redelivered)),
inserted AS (
  INSERT INTO jobs (tenant_id, id, kind, policy, input, tags, webhook_url, state, attempts, started_at)
  SELECT tenant_id, id, kind, policy, input, tags, webhook_url, 'running', 1, now() FROM t
  ORDER BY tenant_id, id
  ON CONFLICT (tenant_id, id) DO NOTHING
  RETURNING tenant_id, id, attempts),
taken AS (
  UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, started_at = now()
  FROM t WHERE j.tenant_id = t.tenant_id AND j.id = t.id
    AND (j.state = 'queued' OR (j.state = 'running' AND t.redelivered))
  RETURNING j.tenant_id, j.id, j.attempts)
SELECT t.tenant_id AS "tenant_id!", t.id AS "id!", coalesce(inserted.attempts, taken.attempts) AS attempt,
  j.state AS "state: JobState"
FROM t LEFT JOIN inserted USING (tenant_id, id) LEFT JOIN taken USING (tenant_id, id)
  LEFT JOIN jobs j ON j.tenant_id = t.tenant_id AND j.id = t.id
