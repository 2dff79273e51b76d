-- Adds one process's provider call tallies to the per-minute stats (rows in key order).
INSERT INTO provider_stats AS s (bucket, minutes, provider, model, outcome, calls, attempts, latency_ms)
SELECT bucket, 1, provider, model, outcome, calls, attempts, latency::bigint[]
FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[])
  AS t(bucket, provider, model, outcome, calls, attempts, latency)
ON CONFLICT (bucket, minutes, provider, model, outcome) DO UPDATE SET
  calls = s.calls + excluded.calls, attempts = s.attempts + excluded.attempts,
  latency_ms = ragq_hist_add(s.latency_ms, excluded.latency_ms)
