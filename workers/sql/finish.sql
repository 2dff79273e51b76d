-- Ends a batch of attempts in one statement: outcomes fenced by attempt; the intents every ended
-- attempt leaves (committed or fenced, it booked its answered calls before this outcome, so they
-- are calls that failed without an answer); the webhook delivery of each outcome that took
-- effect; and those outcomes counted into the dashboard's per-minute job stats (rows upserted in
-- key order, so concurrent batches of other workers cannot deadlock on them). Returns the jobs
-- whose outcome took effect.
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $13::text[])
    AS t(tenant_id, id, attempt, state, result, error_code, error, hook_id, event_type, url, payload,
         traceparent)),
committed AS (
  UPDATE jobs j SET state = t.state, result = t.result, error_code = t.error_code, error = t.error,
    finished_at = CASE WHEN t.state IN ('succeeded', 'failed') THEN now() END
  FROM t WHERE j.tenant_id = t.tenant_id AND j.id = t.id AND j.state = 'running' AND j.attempts = t.attempt
  RETURNING j.tenant_id, j.id, j.kind, t.state, j.created_at, j.started_at),
discarded AS (
  DELETE FROM call_intents c USING t
  WHERE c.tenant_id = t.tenant_id AND c.job_id = t.id AND c.attempt = t.attempt),
delivered AS (
  INSERT INTO webhook_deliveries (id, tenant_id, job_id, event_type, url, payload, state,
                                  next_attempt_at, traceparent)
  SELECT t.hook_id, t.tenant_id, t.id, t.event_type, t.url, t.payload, 'pending',
         now() + $12::int8 * interval '1 millisecond', t.traceparent
  FROM t JOIN committed USING (tenant_id, id) WHERE t.hook_id IS NOT NULL
  ON CONFLICT (tenant_id, job_id, event_type) DO NOTHING),
counted AS (
  INSERT INTO job_stats AS s (bucket, minutes, tenant_id, kind, outcome, jobs, total_ms, work_ms)
  SELECT date_trunc('minute', now()), 1, tenant_id, kind,
         CASE state WHEN 'queued' THEN 'retried' ELSE state END, count(*),
         ragq_hist_sum(ragq_hist_one(extract(epoch FROM now() - created_at) * 1000)),
         ragq_hist_sum(ragq_hist_one(extract(epoch FROM now() - started_at) * 1000))
  FROM committed GROUP BY 3, 4, 5 ORDER BY 3, 4, 5
  ON CONFLICT (bucket, minutes, tenant_id, kind, outcome) DO UPDATE SET
    jobs = s.jobs + excluded.jobs, total_ms = ragq_hist_add(s.total_ms, excluded.total_ms),
    work_ms = ragq_hist_add(s.work_ms, excluded.work_ms))
SELECT tenant_id AS "tenant_id!", id AS "id!" FROM committed
