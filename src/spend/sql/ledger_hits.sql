-- Books calls answered from the response cache: cost 0, no tokens, the kind of hit and what it
-- saved. A hit needs no intent (nothing was sent), but the claim may have recorded one for the
-- call before it knew: that intent goes. A call that already has a row (its intent expired into
-- an estimate while its worker was cut off) is not booked again. Totals advance by trigger
-- (ragq_advance_totals), which counts hits apart from calls and leaves them out of budgets.
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[],
    $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int[],
    $14::jsonb[], $15::timestamptz[], $16::text[], $17::int8[])
    AS t(tenant_id, job_id, attempt, call_index, provider, model, feature, input_tokens,
      output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok, cost_micros,
      latency_ms, tags, occurred_at, cache_hit, saved_micros)),
gone AS (
  DELETE FROM call_intents c USING t
  WHERE c.tenant_id = t.tenant_id AND c.job_id = t.job_id AND c.attempt = t.attempt
    AND c.call_index = t.call_index),
ins AS (
  INSERT INTO provider_calls (tenant_id, job_id, attempt, call_index, provider, model, feature,
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok,
    cost_micros, latency_ms, tags, occurred_at, cache_hit, saved_micros)
  SELECT * FROM t
  WHERE NOT EXISTS (SELECT 1 FROM provider_calls p WHERE p.tenant_id = t.tenant_id
    AND p.job_id = t.job_id AND p.attempt = t.attempt AND p.call_index = t.call_index)
  ON CONFLICT DO NOTHING
  RETURNING tenant_id)
SELECT count(*) AS "rows!", coalesce(array_agg(DISTINCT tenant_id), '{}'::text[]) AS "tenants!"
FROM ins
