-- After a dispatch that left slots unfilled, for the tenants it was offered to ($1, locked by its
-- transaction): when their earliest queued job may run, so that until then dispatchers pass over a
-- tenant whose jobs all wait out retry delays (else such tenants would take every candidate
-- place). One probe of the ready index per priority.
UPDATE tenant_shares s SET next_ready_at = coalesce((
  SELECT min(x.ready_at) FROM unnest(ARRAY[-1, 0, 1]::int2[]) AS p(priority) CROSS JOIN LATERAL (
    SELECT j.ready_at FROM jobs j
    WHERE j.tenant_id = s.tenant_id AND j.state = 'queued' AND j.priority = p.priority
      AND j.ready_at IS NOT NULL
    ORDER BY j.ready_at LIMIT 1) x), 'infinity')
WHERE s.tenant_id = ANY($1)
