-- Books answered calls in place of their intents: a row is inserted only if its intent was still
-- there (not booked already, not expired into an estimate), and the intent goes. Totals advance by
-- trigger (ragq_advance_totals). Answers how many rows and which tenants. The delete returns the
-- rows to insert (joining two CTEs instead would be a nested loop: batch connections have no hash
-- joins).
--
-- Calls answered from the response cache (`cache_hit` set: cost 0, no tokens) need no intent, as
-- nothing was sent; the claim may have recorded one before it knew, which goes too. A hit is
-- inserted unless its call already has a row (its intent expired into an estimate while its worker
-- was cut off). Hits and answers are booked by one statement so that the trigger upserts every
-- aggregate row of the batch in one key order: two statements, each in order, deadlocked between
-- workers.
WITH t AS (
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[],
    $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int[],
    $14::jsonb[], $15::timestamptz[], $16::text[], $17::int8[], $18::text[], $19::int[])
    AS t(tenant_id, job_id, attempt, call_index, provider, model, feature, input_tokens,
      output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok, cost_micros,
      latency_ms, tags, occurred_at, cache_hit, saved_micros, prompt, prompt_version)),
gone AS (
  DELETE FROM call_intents c USING t
  WHERE c.tenant_id = t.tenant_id AND c.job_id = t.job_id AND c.attempt = t.attempt
    AND c.call_index = t.call_index
  RETURNING t.*),
ins AS (
  INSERT INTO provider_calls (tenant_id, job_id, attempt, call_index, provider, model, feature,
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok,
    cost_micros, latency_ms, tags, occurred_at, cache_hit, saved_micros, prompt, prompt_version)
  SELECT * FROM gone WHERE gone.cache_hit IS NULL
  UNION ALL
  SELECT * FROM t WHERE t.cache_hit IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM provider_calls p WHERE p.tenant_id = t.tenant_id
      AND p.job_id = t.job_id AND p.attempt = t.attempt AND p.call_index = t.call_index)
  ON CONFLICT DO NOTHING
  RETURNING tenant_id)
SELECT count(*) AS "rows!", coalesce(array_agg(DISTINCT tenant_id), '{}'::text[]) AS "tenants!"
FROM ins
