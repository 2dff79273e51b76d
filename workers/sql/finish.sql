-- Ends a batch of attempts in one statement: outcomes fenced by attempt (a retry goes back to
-- `queued`, ready after its delay); the intents every ended attempt leaves (committed or fenced, it
-- booked its answered calls before this outcome, so they are calls that failed without an answer);
-- the webhook delivery of each outcome that took effect. Returns the jobs whose outcome took effect,
-- with when ragq accepted them and, for a retry, when it may run again. Times are the clock's, not
-- the transaction's: a job that starts after this one's slot was freed starts after it finished.
-- No CTE joins another (the batch connection has no hash joins, so that would be a nested loop
-- over the batch squared): what a later step needs of the input is returned by the step before.
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $13::text[],
                       $14::int8[])
    AS t(tenant_id, id, attempt, state, result, error_code, error, hook_id, event_type, url, payload,
         traceparent, retry_ms)),
committed AS (
  UPDATE jobs j SET state = t.state, result = t.result, error_code = t.error_code, error = t.error,
    holder = NULL,
    finished_at = CASE WHEN t.state IN ('succeeded', 'failed') THEN clock_timestamp() END,
    ready_at = CASE WHEN t.state = 'queued' THEN now() + t.retry_ms * interval '1 millisecond' END,
    redaction = CASE WHEN t.state = 'queued' THEN j.redaction END
  FROM t WHERE j.tenant_id = t.tenant_id AND j.id = t.id AND j.state = 'running' AND j.attempts = t.attempt
  RETURNING j.tenant_id, j.id, j.created_at, j.ready_at, t.hook_id, t.event_type, t.url,
    t.payload, t.traceparent),
discarded AS (
  DELETE FROM call_intents c USING t
  WHERE c.tenant_id = t.tenant_id AND c.job_id = t.id AND c.attempt = t.attempt),
delivered AS (
  INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state,
                                  next_attempt_at, traceparent)
  SELECT c.hook_id, c.tenant_id, c.id, c.event_type, c.url, c.payload, 'pending',
         now() + $12::int8 * interval '1 millisecond', c.traceparent
  FROM committed c WHERE c.hook_id IS NOT NULL
  ON CONFLICT (tenant_id, job_id, event_type) DO NOTHING)
SELECT tenant_id AS "tenant_id!", id AS "id!", created_at AS "accepted_at!", ready_at AS "retry_at?"
FROM committed
