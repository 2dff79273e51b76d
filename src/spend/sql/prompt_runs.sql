-- The saved prompts finished jobs rendered, one row each, with the columns a spend report groups
-- and filters by: a batch's templated prompts (failed when the job failed, or when its completion
-- of that prompt holds an error), and a rag.answer job's saved template (failed with the job).
-- The day is the day the job was created (UTC); filter on created_at, which is indexed.
SELECT j.tenant_id, coalesce(j.tags->>'feature', '') AS feature,
       p.value->'template'->>'name' AS prompt,
       coalesce(p.value->'template'->>'version', '0')::int AS prompt_version,
       (j.created_at AT TIME ZONE 'UTC')::date AS day, j.created_at,
       (j.state = 'failed'
        OR coalesce(j.result->'completions'->((p.ordinality - 1)::int) ? 'error', false)) AS failed
FROM jobs j
CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN j.kind = 'batch.complete'
    THEN j.input->'prompts'
    ELSE jsonb_build_array(jsonb_build_object('template', j.input->'template')) END)
  WITH ORDINALITY AS p(value, ordinality)
WHERE j.state IN ('succeeded', 'failed') AND j.kind IN ('batch.complete', 'rag.answer')
  AND jsonb_typeof(p.value->'template') = 'object'
