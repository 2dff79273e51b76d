-- What the dashboard charts, kept where every process writes and any api process reads, so its
-- pictures are right with any number of workers.
--
-- Latency histograms are BIGINT[] counts over the fixed bounds of ragq_latency_bounds() (ms),
-- bucket i counting values in [bound i-1, bound i); the last is unbounded. Percentiles are read
-- from them as Prometheus' histogram_quantile does, within a bucket's width.
CREATE FUNCTION ragq_latency_bounds() RETURNS FLOAT8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{5,10,25,50,100,250,500,1000,2500,5000,10000,30000,60000,300000,1800000}'::float8[]
$$;

-- A histogram holding one value.
CREATE FUNCTION ragq_hist_one(ms FLOAT8) RETURNS BIGINT[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg((i = width_bucket(ms, ragq_latency_bounds()))::int::bigint ORDER BY i)
    FROM generate_series(0, cardinality(ragq_latency_bounds())) AS i
$$;

-- Two histograms added bucket by bucket (either may be NULL).
CREATE FUNCTION ragq_hist_add(a BIGINT[], b BIGINT[]) RETURNS BIGINT[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
        ELSE ARRAY(SELECT x + y FROM unnest(a, b) WITH ORDINALITY AS u(x, y, n) ORDER BY n) END
$$;

CREATE AGGREGATE ragq_hist_sum(BIGINT[]) (SFUNC = ragq_hist_add, STYPE = BIGINT[]);

-- Finished attempts per minute, written by each worker every few seconds from what it committed
-- (in the outcome's own statement this cost Postgres about 30 us per job). `minutes` is the row's
-- width: 1, or 60 once maintenance has folded rows older than two days into hours, which keeps a
-- 30-day chart to a few thousand rows. Rows of tenant_id `*` count every tenant (the operator's
-- view), so that view reads a few rows per minute however many tenants there are.
--   outcome: succeeded / failed (terminal), retried (handed back for a later attempt).
--   total_ms: from the job's acceptance to the outcome; work_ms: the attempt inside a worker.
CREATE TABLE job_stats (
    bucket    TIMESTAMPTZ NOT NULL,
    minutes   INT NOT NULL CHECK (minutes IN (1, 60)),
    tenant_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    outcome   TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'retried')),
    jobs      BIGINT NOT NULL,
    total_ms  BIGINT[] NOT NULL,
    work_ms   BIGINT[] NOT NULL,
    PRIMARY KEY (bucket, minutes, tenant_id, kind, outcome)
);
CREATE INDEX job_stats_tenant ON job_stats (tenant_id, bucket);

-- Provider calls per minute (after their retries), written by each worker every few seconds from
-- what its router saw. outcome: ok, an error code (rate_limited, provider_unavailable, ...), or a
-- call never sent: paced (the model's rate-limit slot was too far) or circuit_open.
CREATE TABLE provider_stats (
    bucket     TIMESTAMPTZ NOT NULL,
    minutes    INT NOT NULL CHECK (minutes IN (1, 60)),
    provider   TEXT NOT NULL,
    model      TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    calls      BIGINT NOT NULL,
    attempts   BIGINT NOT NULL,
    latency_ms BIGINT[] NOT NULL,
    PRIMARY KEY (bucket, minutes, provider, model, outcome)
);

-- Each live worker's circuit breaker per model, as of its last report.
CREATE TABLE provider_breakers (
    worker_id  TEXT NOT NULL,
    model      TEXT NOT NULL,
    provider   TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('closed', 'half_open', 'open')),
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (worker_id, model)
);

-- Every message sent to the dead-letter queue, by reason code. tenant_id and kind are set when
-- the message was a job of a known tenant (never for unparsable or unauthorized messages, whose
-- claimed tenant is not to be trusted).
CREATE TABLE dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    tenant_id   TEXT,
    kind        TEXT,
    reason_code TEXT NOT NULL,
    message_id  TEXT
);
CREATE INDEX dead_letters_at ON dead_letters (at);

-- The dashboard's sessions: a browser signs in with a key once and holds a random token in an
-- HttpOnly cookie; only its hash is kept. tenant_id NULL means the operator (every tenant).
CREATE TABLE dashboard_sessions (
    token_hash BYTEA PRIMARY KEY,
    tenant_id  TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

-- Time-range reads. The ledger and the deliveries are appended in time order, so BRIN indexes find
-- a window's pages for almost nothing on the write path (B-trees on deliveries, which are updated
-- as they are attempted, cost the job path a measurable share of Postgres' time per job).
-- autosummarize: autovacuum summarizes each range as it fills; until then a range is always read,
-- which is right for the newest pages and wrong for a whole table loaded before any vacuum.
CREATE INDEX provider_calls_occurred ON provider_calls USING brin (occurred_at)
    WITH (autosummarize = on);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries USING brin (created_at)
    WITH (autosummarize = on);

-- Folds the minute rows of both stats tables older than two days into hour rows, and drops
-- dashboard sessions that expired. Any process may call it; an advisory lock serializes them.
CREATE FUNCTION ragq_stats_maintenance() RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    cutoff TIMESTAMPTZ := date_trunc('hour', now() - interval '2 days');
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('ragq_stats_maintenance')) THEN
        RETURN;
    END IF;
    WITH folded AS (
        DELETE FROM job_stats WHERE minutes = 1 AND bucket < cutoff RETURNING *)
    INSERT INTO job_stats AS s
    SELECT date_trunc('hour', bucket), 60, tenant_id, kind, outcome, sum(jobs),
        ragq_hist_sum(total_ms), ragq_hist_sum(work_ms)
    FROM folded GROUP BY 1, 3, 4, 5
    ON CONFLICT (bucket, minutes, tenant_id, kind, outcome) DO UPDATE SET
        jobs = s.jobs + excluded.jobs, total_ms = ragq_hist_add(s.total_ms, excluded.total_ms),
        work_ms = ragq_hist_add(s.work_ms, excluded.work_ms);
    WITH folded AS (
        DELETE FROM provider_stats WHERE minutes = 1 AND bucket < cutoff RETURNING *)
    INSERT INTO provider_stats AS s
    SELECT date_trunc('hour', bucket), 60, provider, model, outcome, sum(calls), sum(attempts),
        ragq_hist_sum(latency_ms)
    FROM folded GROUP BY 1, 3, 4, 5
    ON CONFLICT (bucket, minutes, provider, model, outcome) DO UPDATE SET
        calls = s.calls + excluded.calls, attempts = s.attempts + excluded.attempts,
        latency_ms = ragq_hist_add(s.latency_ms, excluded.latency_ms);
    DELETE FROM dashboard_sessions WHERE expires_at < now();
    DELETE FROM provider_breakers WHERE updated_at < now() - interval '1 hour';
END $$;
