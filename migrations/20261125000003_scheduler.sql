-- Cron pipelines: definitions, one run per (pipeline, scheduled time), a transactional outbox for the
-- job messages they enqueue, and the lease that makes one scheduler the leader.

CREATE TABLE pipelines (
    id                     BIGSERIAL PRIMARY KEY,
    tenant_id              TEXT NOT NULL REFERENCES tenants (id),
    name                   TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    cron                   TEXT NOT NULL,
    time_zone              TEXT NOT NULL,
    -- A job message without `id` and `tenant`; string values may hold {{scheduled_time}} and
    -- {{scheduled_date}}, rendered in the pipeline's time zone.
    job_template           JSONB NOT NULL,
    enabled                BOOLEAN NOT NULL DEFAULT true,
    -- allow: runs may overlap; forbid: a slot is skipped while the previous run's job is unfinished;
    -- replace: the previous unfinished job is failed as `replaced` and the new one enqueued.
    overlap                TEXT NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'forbid', 'replace')),
    -- After downtime: skip (fire only a slot that is on time), run_once (fire the latest missed
    -- slot), run_all (fire every missed slot, the latest `missed_limit` of them).
    missed                 TEXT NOT NULL DEFAULT 'run_once' CHECK (missed IN ('skip', 'run_once', 'run_all')),
    missed_limit           INT NOT NULL DEFAULT 10 CHECK (missed_limit BETWEEN 1 AND 1000),
    -- A slot later than this is never fired (NULL: no deadline).
    starting_deadline_secs INT CHECK (starting_deadline_secs > 0),
    -- The next slot not yet considered; the leader moves it forward in the transaction that fires.
    next_fire_at           TIMESTAMPTZ NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX pipelines_due ON pipelines (next_fire_at) WHERE enabled;

-- Run states:
--   enqueued : its job was written (queued) with an outbox message; the job's state is the outcome.
--   skipped  : not run (overlap forbid, or missed-run policy); `reason` says why.
CREATE TABLE pipeline_runs (
    pipeline_id  BIGINT NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    scheduled_at TIMESTAMPTZ NOT NULL,
    trigger      TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    state        TEXT NOT NULL CHECK (state IN ('enqueued', 'skipped')),
    job_id       TEXT,
    reason       TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline_id, scheduled_at),
    CHECK ((state = 'enqueued') = (job_id IS NOT NULL))
);

-- Messages committed with the rows that caused them, published (confirmed) by the relay and then
-- deleted. A crash between publish and delete publishes again; job ids make that harmless.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    routing_key TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    body        BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
