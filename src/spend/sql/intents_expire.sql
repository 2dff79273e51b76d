-- Books the intents of dead workers (as in intents_expired_tenants.sql) as estimated ledger rows at
-- their worst case, tagged like their job (and `shadow` for call indexes from $2, `cache_lookup`
-- from $3). Totals advance
-- by trigger (ragq_advance_totals). Answers how many rows and which tenants.
WITH gone AS (
  DELETE FROM call_intents c
  WHERE c.occurred_at < now() - $1::int8 * interval '1 millisecond'
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.tenant_id = c.tenant_id AND j.id = c.job_id
                    AND j.state = 'running' AND j.attempts = c.attempt)
  RETURNING c.*),
ins AS (
  INSERT INTO provider_calls (tenant_id, job_id, attempt, call_index, provider, model, feature,
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok,
    cost_micros, latency_ms, tags, occurred_at, estimated)
  SELECT g.tenant_id, g.job_id, g.attempt, g.call_index, g.provider, g.model,
    coalesce(j.tags->>'feature', ''), g.input_tokens, g.output_tokens,
    g.input_price_micros_per_mtok, g.output_price_micros_per_mtok, g.cost_micros, 0,
    CASE WHEN g.call_index >= $3 THEN coalesce(j.tags, '{}') || '{"cache_lookup": "true"}'
         WHEN g.call_index >= $2 THEN coalesce(j.tags, '{}') || '{"shadow": "true"}'
         ELSE coalesce(j.tags, '{}') END,
    g.occurred_at, true
  FROM gone g LEFT JOIN jobs j ON j.tenant_id = g.tenant_id AND j.id = g.job_id
  ORDER BY g.tenant_id, g.job_id, g.attempt, g.call_index
  ON CONFLICT DO NOTHING
  RETURNING tenant_id)
SELECT count(*) AS "rows!", coalesce(array_agg(DISTINCT tenant_id), '{}'::text[]) AS "tenants!"
FROM ins
