-- Applies a batch's changes to tenants' dispatch state (rows locked in tenant order just before):
-- jobs queued, the share the workers resolved for the tenant, and when its earliest queued job may
-- run (`-infinity` once one may run now). A tenant that had nothing queued resumes at the least
-- virtual time of those that have, so an idle spell earns no burst. Counts never go below zero.
WITH d AS (
  SELECT * FROM UNNEST($1::text[], $2::int8[], $3::float8[], $4::int4[], $5::timestamptz[],
                       $6::bool[])
    AS d(tenant_id, queued, weight, max_in_flight, ready_at, ready_now)),
floor AS (SELECT min(vtime) AS v FROM tenant_shares WHERE queued > 0)
UPDATE tenant_shares s SET
  vtime = CASE WHEN s.queued = 0 AND d.queued > 0
               THEN greatest(s.vtime, coalesce((SELECT v FROM floor), s.vtime)) ELSE s.vtime END,
  queued = greatest(0, s.queued + d.queued),
  weight = coalesce(d.weight, s.weight),
  max_in_flight = CASE WHEN d.weight IS NULL THEN s.max_in_flight ELSE d.max_in_flight END,
  next_ready_at = CASE WHEN d.ready_now THEN '-infinity'
                       ELSE least(s.next_ready_at, coalesce(d.ready_at, 'infinity')) END
FROM d WHERE s.tenant_id = d.tenant_id
