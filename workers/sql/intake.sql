-- Takes a batch of messages in as `queued` jobs, ready now, in the order they arrived. A job the api
-- or a pipeline run wrote first (queued, no ready_at: waiting for its message) is taken in too;
-- any other known id was taken in before. Returns which jobs this batch took in (the caller
-- matches them to its messages: a join here would be a nested loop, the batch connection has no
-- hash joins).
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                       $7::text[], $8::int2[], $9::text[], $10::jsonb[], $11::jsonb[])
    WITH ORDINALITY AS t(tenant_id, id, kind, policy, input, tags, webhook_url, priority, traceparent,
                         redaction, cache, ord)),
taken AS (
  INSERT INTO jobs AS j (tenant_id, id, kind, policy, input, tags, webhook_url, state, priority,
                         traceparent, redaction, cache, ready_at)
  SELECT tenant_id, id, kind, policy, input, tags, webhook_url, 'queued', priority, traceparent,
         redaction, cache, now() + ord * interval '1 microsecond'
  FROM t ORDER BY tenant_id, id
  ON CONFLICT (tenant_id, id) DO UPDATE SET input = EXCLUDED.input, priority = EXCLUDED.priority,
    traceparent = EXCLUDED.traceparent, redaction = EXCLUDED.redaction, cache = EXCLUDED.cache,
    ready_at = EXCLUDED.ready_at
  WHERE j.state = 'queued' AND j.ready_at IS NULL
  RETURNING j.tenant_id, j.id)
SELECT tenant_id AS "tenant_id!", id AS "id!" FROM taken
