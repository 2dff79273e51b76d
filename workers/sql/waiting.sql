-- Whether any tenant has ready jobs it may run now (after a dispatch found every such tenant held
-- by other dispatches: this one tries again shortly instead of idling). The filter is
-- `candidates.sql`'s.
SELECT EXISTS (
  SELECT 1 FROM tenant_shares s
  WHERE s.queued > 0 AND s.next_ready_at <= clock_timestamp()
    AND CASE WHEN s.max_in_flight IS NULL THEN true ELSE
         (SELECT count(*) FROM jobs r WHERE r.tenant_id = s.tenant_id AND r.holder IS NOT NULL)
         < s.max_in_flight END) AS "waiting!"
