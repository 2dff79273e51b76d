-- Adds one worker's tallies of finished attempts to the per-minute job stats (rows in key order).
INSERT INTO job_stats AS s (bucket, minutes, tenant_id, kind, outcome, jobs, total_ms, work_ms)
SELECT bucket, 1, tenant_id, kind, outcome, jobs, total::bigint[], work::bigint[]
FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[])
  AS t(bucket, tenant_id, kind, outcome, jobs, total, work)
ON CONFLICT (bucket, minutes, tenant_id, kind, outcome) DO UPDATE SET
  jobs = s.jobs + excluded.jobs, total_ms = ragq_hist_add(s.total_ms, excluded.total_ms),
  work_ms = ragq_hist_add(s.work_ms, excluded.work_ms)
