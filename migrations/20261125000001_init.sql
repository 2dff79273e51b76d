-- ragq's first schema: tenants, jobs and their state machine, the spend ledger, webhook deliveries.

CREATE TABLE tenants (
    id             TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name           TEXT NOT NULL,
    -- SHA-256 of the tenant's API key; the key itself is shown once and never stored.
    api_key_hash   BYTEA UNIQUE,
    -- The AMQP user allowed to publish jobs for this tenant (RabbitMQ validates user_id).
    amqp_user      TEXT,
    -- Standard Webhooks signing secret (whsec_...); needed in clear to sign, never logged.
    webhook_secret TEXT NOT NULL CHECK (webhook_secret LIKE 'whsec_%'),
    plan           TEXT NOT NULL DEFAULT 'standard',
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Job states (mirrored by jobs::JobState):
--   queued    : accepted, waiting for a worker. Entered on submission over HTTP, or by a worker that
--               hands the job back for a delayed retry. Left when a worker claims it.
--   running   : claimed by a worker (attempts counts claims). Left by that worker's outcome commit,
--               or re-claimed by a redelivery after the holder died.
--   succeeded : terminal; result is set.
--   failed    : terminal; error_code and error are set.
CREATE TABLE jobs (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 128),
    kind         TEXT NOT NULL CHECK (kind IN ('batch.complete', 'rag.answer', 'ingest')),
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    policy       TEXT NOT NULL,
    input        JSONB NOT NULL,
    tags         JSONB NOT NULL DEFAULT '{}',
    webhook_url  TEXT,
    attempts     INT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    result       JSONB,
    error_code   TEXT,
    error        TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, id),
    CHECK ((state = 'succeeded') = (result IS NOT NULL)),
    CHECK (state <> 'failed' OR error_code IS NOT NULL),
    CHECK (state NOT IN ('succeeded', 'failed') OR finished_at IS NOT NULL),
    CHECK (state <> 'running' OR attempts >= 1)
);
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC);

-- The spend ledger: one row per provider call, written once (the unique key makes re-writes no-ops).
CREATE TABLE provider_calls (
    id                           BIGSERIAL PRIMARY KEY,
    tenant_id                    TEXT NOT NULL REFERENCES tenants (id),
    job_id                       TEXT NOT NULL,
    attempt                      INT NOT NULL,
    call_index                   INT NOT NULL,
    provider                     TEXT NOT NULL,
    model                        TEXT NOT NULL,
    input_tokens                 BIGINT NOT NULL CHECK (input_tokens >= 0),
    output_tokens                BIGINT NOT NULL CHECK (output_tokens >= 0),
    input_price_micros_per_mtok  BIGINT NOT NULL CHECK (input_price_micros_per_mtok >= 0),
    output_price_micros_per_mtok BIGINT NOT NULL CHECK (output_price_micros_per_mtok >= 0),
    cost_micros                  BIGINT NOT NULL CHECK (cost_micros >= 0),
    latency_ms                   INT NOT NULL,
    tags                         JSONB NOT NULL DEFAULT '{}',
    created_at                   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, job_id, attempt, call_index)
);
CREATE INDEX provider_calls_tenant_time ON provider_calls (tenant_id, created_at);

-- Webhook deliveries: one per job outcome event; id is the webhook-id receivers dedupe on.
--   pending   : to be sent when next_attempt_at comes (a sender leases it by moving next_attempt_at).
--   delivered : the receiver answered 2xx.
--   failed    : attempts spent; kept for replay.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    job_id          TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    UNIQUE (tenant_id, job_id, event_type),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt      INT NOT NULL,
    status_code  INT,
    error        TEXT,
    duration_ms  INT NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, attempt)
);
