-- Tenants with intents of dead workers: older than the TTL ($1, milliseconds), and not of the
-- attempt their job is running now.
SELECT DISTINCT c.tenant_id
FROM call_intents c
WHERE c.occurred_at < now() - $1::int8 * interval '1 millisecond'
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.tenant_id = c.tenant_id AND j.id = c.job_id
                  AND j.state = 'running' AND j.attempts = c.attempt)
