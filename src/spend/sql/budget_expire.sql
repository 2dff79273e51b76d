-- Releases the reservations of workers that died (expired, as of $1 milliseconds from now: tests
-- look ahead instead of sleeping) and hands what they held back to their budgets. Answers how many
-- went.
WITH gone AS (
  DELETE FROM budget_reservations WHERE expires_at < now() + $1::int8 * interval '1 millisecond'
  RETURNING budget_id, period_start, micros, tokens),
given AS (
  UPDATE budget_usage u SET reserved_micros = u.reserved_micros - g.micros,
    reserved_tokens = u.reserved_tokens - g.tokens, reserved_jobs = u.reserved_jobs - g.n
  FROM (SELECT budget_id, period_start, sum(micros)::int8 AS micros, sum(tokens)::int8 AS tokens,
          count(*) AS n
        FROM gone GROUP BY 1, 2) g
  WHERE u.budget_id = g.budget_id AND u.period_start = g.period_start)
SELECT count(*) AS "released!" FROM gone
