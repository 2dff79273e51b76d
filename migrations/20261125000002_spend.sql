-- Spend: the ledger partitioned by month, daily aggregates for reports, budgets with reservations
-- and usage kept in step with the ledger, and alerts fired once per threshold per period.
-- Periods are UTC calendar days and months.

-- 1. The ledger, partitioned by the time the call completed (`occurred_at`, set by the worker when the
--    provider answered, so re-writing the same row after a retry lands in the same partition and the
--    key below still makes it a no-op). Partitions are created ahead and dropped after retention by
--    ragq_ledger_maintenance(); the default partition catches anything outside them.
ALTER TABLE provider_calls RENAME TO provider_calls_v1;
ALTER INDEX provider_calls_tenant_time RENAME TO provider_calls_v1_tenant_time;
CREATE TABLE provider_calls (
    tenant_id                    TEXT NOT NULL,
    job_id                       TEXT NOT NULL,
    attempt                      INT NOT NULL,
    call_index                   INT NOT NULL,
    provider                     TEXT NOT NULL,
    model                        TEXT NOT NULL,
    -- The job's `feature` tag ('' when absent), the dimension budgets and reports group by.
    feature                      TEXT NOT NULL DEFAULT '',
    input_tokens                 BIGINT NOT NULL CHECK (input_tokens >= 0),
    output_tokens                BIGINT NOT NULL CHECK (output_tokens >= 0),
    input_price_micros_per_mtok  BIGINT NOT NULL CHECK (input_price_micros_per_mtok >= 0),
    output_price_micros_per_mtok BIGINT NOT NULL CHECK (output_price_micros_per_mtok >= 0),
    cost_micros                  BIGINT NOT NULL CHECK (cost_micros >= 0),
    latency_ms                   INT NOT NULL,
    tags                         JSONB NOT NULL DEFAULT '{}',
    occurred_at                  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, job_id, attempt, call_index, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE provider_calls_default PARTITION OF provider_calls DEFAULT;
CREATE INDEX provider_calls_tenant_time ON provider_calls (tenant_id, occurred_at);

-- Ledger partitions: this month and `months_ahead` more exist; with retention_months > 0, only the
-- current month and the retention_months - 1 before it are kept (daily aggregates stay). Serialized
-- by an advisory lock so any number of processes may call it.
CREATE FUNCTION ragq_ledger_maintenance(months_ahead INT, retention_months INT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    first_month DATE := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    m DATE;
    part RECORD;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('ragq_ledger_maintenance')) THEN
        RETURN;
    END IF;
    FOR i IN 0..months_ahead LOOP
        m := (first_month + make_interval(months => i))::date;
        IF to_regclass(format('provider_calls_%s', to_char(m, 'YYYY_MM'))) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF provider_calls FOR VALUES FROM (%L) TO (%L)',
                format('provider_calls_%s', to_char(m, 'YYYY_MM')),
                m::timestamp AT TIME ZONE 'UTC',
                (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
    IF retention_months > 0 THEN
        FOR part IN
            SELECT c.relname FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'provider_calls'::regclass
              AND c.relname ~ '^provider_calls_[0-9]{4}_[0-9]{2}$'
              AND to_date(substring(c.relname from 16), 'YYYY_MM')
                  < (first_month - make_interval(months => retention_months - 1))::date
        LOOP
            EXECUTE format('DROP TABLE %I', part.relname);
        END LOOP;
    END IF;
END $$;

SELECT ragq_ledger_maintenance(2, 0);

-- 2. Daily aggregates: what reports read, kept when raw ledger rows are dropped.
CREATE TABLE spend_daily (
    day           DATE NOT NULL,
    tenant_id     TEXT NOT NULL,
    feature       TEXT NOT NULL,
    model         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    calls         BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_micros   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, feature, model, provider)
);

INSERT INTO provider_calls (tenant_id, job_id, attempt, call_index, provider, model, feature,
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok,
    cost_micros, latency_ms, tags, occurred_at)
SELECT tenant_id, job_id, attempt, call_index, provider, model, coalesce(tags->>'feature', ''),
    input_tokens, output_tokens, input_price_micros_per_mtok, output_price_micros_per_mtok,
    cost_micros, latency_ms, tags, created_at
FROM provider_calls_v1;
INSERT INTO spend_daily
SELECT (occurred_at AT TIME ZONE 'UTC')::date, tenant_id, feature, model, provider, count(*),
    sum(input_tokens), sum(output_tokens), sum(cost_micros)
FROM provider_calls GROUP BY 1, 2, 3, 4, 5;
DROP TABLE provider_calls_v1;

-- 3. Budgets: per tenant, or per tenant and feature tag. Alerts refer to the soft limit (or the hard
--    limit when there is no soft one); the hard limit and the quotas stop new jobs.
--    on_limit: 'fail' fails the job with budget_exceeded; 'downgrade' runs it on models whose
--    worst-case cost fits what is left, and fails it only if none does.
ALTER TABLE tenants ADD COLUMN alert_webhook_url TEXT;

CREATE TABLE budgets (
    id                BIGSERIAL PRIMARY KEY,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    feature           TEXT NOT NULL DEFAULT '',  -- '' = every feature of the tenant
    period            TEXT NOT NULL CHECK (period IN ('day', 'month')),
    soft_limit_micros BIGINT CHECK (soft_limit_micros > 0),
    hard_limit_micros BIGINT CHECK (hard_limit_micros > 0),
    job_quota         BIGINT CHECK (job_quota > 0),
    token_quota       BIGINT CHECK (token_quota > 0),
    alert_thresholds  INT[] NOT NULL DEFAULT '{50,80,100}',
    on_limit          TEXT NOT NULL DEFAULT 'fail' CHECK (on_limit IN ('fail', 'downgrade')),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, feature, period),
    CHECK (soft_limit_micros IS NULL OR hard_limit_micros IS NULL OR soft_limit_micros <= hard_limit_micros),
    CHECK (soft_limit_micros IS NOT NULL OR hard_limit_micros IS NOT NULL
           OR job_quota IS NOT NULL OR token_quota IS NOT NULL)
);

-- A budget's usage in one period: booked spend (kept in step with the ledger, in the same statement)
-- and what running jobs have reserved. A budget check reads one row, never the ledger.
CREATE TABLE budget_usage (
    budget_id       BIGINT NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start    DATE NOT NULL,
    cost_micros     BIGINT NOT NULL DEFAULT 0,
    tokens          BIGINT NOT NULL DEFAULT 0,
    jobs            BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    reserved_tokens BIGINT NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    reserved_jobs   BIGINT NOT NULL DEFAULT 0 CHECK (reserved_jobs >= 0),
    PRIMARY KEY (budget_id, period_start)
);

-- What one attempt of a running job holds against a budget, released when the attempt's outcome is
-- committed, when a redelivery takes the job over, or when it expires (its worker died).
CREATE TABLE budget_reservations (
    tenant_id    TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    budget_id    BIGINT NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    attempt      INT NOT NULL,
    period_start DATE NOT NULL,
    micros       BIGINT NOT NULL CHECK (micros >= 0),
    tokens       BIGINT NOT NULL CHECK (tokens >= 0),
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, job_id, budget_id)
);
CREATE INDEX budget_reservations_expiry ON budget_reservations (expires_at);

-- One row per threshold crossed per period: the key makes each alert fire once.
CREATE TABLE budget_alerts (
    budget_id     BIGINT NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start  DATE NOT NULL,
    threshold_pct INT NOT NULL,
    cost_micros   BIGINT NOT NULL,
    fired_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, period_start, threshold_pct)
);

-- Alert deliveries are not about a job: their job_id is a key such as 'budget:7:2026-11-01:80', so
-- the delivery's uniqueness (tenant, job_id, event_type) also makes each alert's webhook unique.

