-- Books ledger rows directly, without intents (imports, fixtures); a row already there is a
-- no-op. Totals advance by trigger (ragq_advance_totals). Answers how many rows and which tenants.
WITH ins AS (
  INSERT INTO provider_calls (tenant_id, job_id, attempt, call_index, provider, model, feature,
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok,
    cost_micros, latency_ms, tags, occurred_at, cache_hit, saved_micros, prompt, prompt_version)
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[],
    $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int[],
    $14::jsonb[], $15::timestamptz[], $16::text[], $17::int8[], $18::text[], $19::int[])
  ON CONFLICT DO NOTHING
  RETURNING tenant_id)
SELECT count(*) AS "rows!", coalesce(array_agg(DISTINCT tenant_id), '{}'::text[]) AS "tenants!"
FROM ins
