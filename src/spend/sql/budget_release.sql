-- Releases the reservations of ended attempts ($3 NULL: every attempt of the job) and hands what
-- they held back to their budgets; a final outcome ($4) also counts the job against the budgets'
-- job totals. Answers how many reservations went.
WITH gone AS (
  DELETE FROM budget_reservations r
  USING UNNEST($1::text[], $2::text[], $3::int[], $4::bool[]) AS t(tenant_id, job_id, attempt, terminal)
  WHERE r.tenant_id = t.tenant_id AND r.job_id = t.job_id
    AND (t.attempt IS NULL OR r.attempt = t.attempt)
  RETURNING r.budget_id, r.period_start, r.micros, r.tokens, t.terminal),
given AS (
  UPDATE budget_usage u SET reserved_micros = u.reserved_micros - g.micros,
    reserved_tokens = u.reserved_tokens - g.tokens, reserved_jobs = u.reserved_jobs - g.n,
    jobs = u.jobs + g.done
  FROM (SELECT budget_id, period_start, sum(micros)::int8 AS micros, sum(tokens)::int8 AS tokens,
          count(*) AS n, count(*) FILTER (WHERE terminal) AS done
        FROM gone GROUP BY 1, 2) g
  WHERE u.budget_id = g.budget_id AND u.period_start = g.period_start)
SELECT count(*) AS "released!" FROM gone
