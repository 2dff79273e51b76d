-- Which of a batch's dispatched attempts still hold their job: running, at that attempt (a job
-- queued again after its worker's lease ended, and taken by another, fences the old attempt).
SELECT j.tenant_id AS "tenant_id!", j.id AS "id!"
FROM UNNEST($1::text[], $2::text[], $3::int4[]) AS t(tenant_id, id, attempt)
JOIN jobs j ON j.tenant_id = t.tenant_id AND j.id = t.id
WHERE j.state = 'running' AND j.attempts = t.attempt
