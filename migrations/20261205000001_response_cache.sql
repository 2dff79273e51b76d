-- The response cache: answers to chat calls, kept per tenant and looked up by a hash of the
-- normalized request (exact), or by the nearest cached prompt in the vector store (semantic).
--
-- An entry is one row, written in one transaction: a crash leaves the whole entry or none. The
-- vector of a semantic entry is written to the store first; a vector whose row never committed
-- matches nothing, because a semantic hit is read back from this table by (tenant_id, id).
CREATE TABLE cache_entries (
    tenant_id     TEXT NOT NULL,
    -- SHA-256 of the tenant, policy, plan, messages and sampling parameters.
    key           BYTEA NOT NULL,
    id            UUID NOT NULL,
    -- SHA-256 of the same but the last user message: what a semantic match must share.
    scope         BYTEA NOT NULL,
    -- Whether the prompt's vector is in the vector store (semantic lookups can find it).
    semantic      BOOLEAN NOT NULL,
    policy        TEXT NOT NULL,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    content       TEXT NOT NULL,
    finish_reason TEXT,
    response_id   TEXT,
    -- What the provider billed for the answer, and its cost then: what a hit saves.
    input_tokens  BIGINT NOT NULL CHECK (input_tokens >= 0),
    output_tokens BIGINT NOT NULL CHECK (output_tokens >= 0),
    cost_micros   BIGINT NOT NULL CHECK (cost_micros >= 0),
    created_at    TIMESTAMPTZ NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE UNIQUE INDEX cache_entries_id ON cache_entries (tenant_id, id);
-- The sweep: expired entries, and each tenant's oldest beyond its bound.
CREATE INDEX cache_entries_expiry ON cache_entries (expires_at);
CREATE INDEX cache_entries_age ON cache_entries (tenant_id, created_at);

-- A job's own cache setting (`cache` in its message), read back when it is dispatched.
ALTER TABLE jobs ADD COLUMN cache JSONB;

-- A call answered from the cache is a ledger row of its own: cost 0, no tokens billed (so no
-- quota or budget counts it), the kind of hit, and what the call would have cost.
ALTER TABLE provider_calls
    ADD COLUMN cache_hit TEXT CHECK (cache_hit IN ('exact', 'semantic')),
    ADD COLUMN saved_micros BIGINT NOT NULL DEFAULT 0 CHECK (saved_micros >= 0);
ALTER TABLE spend_daily
    ADD COLUMN cache_hits BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN saved_micros BIGINT NOT NULL DEFAULT 0;

-- `calls` stays the count of provider calls (what an invoice reconciles against); hits and what
-- they saved are counted beside it.
CREATE OR REPLACE FUNCTION ragq_advance_totals() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spend_daily AS d (day, tenant_id, feature, model, provider, calls, input_tokens,
        output_tokens, cost_micros, cache_hits, saved_micros)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date, tenant_id, feature, model, provider,
        count(*) FILTER (WHERE cache_hit IS NULL), sum(input_tokens), sum(output_tokens),
        sum(cost_micros), count(*) FILTER (WHERE cache_hit IS NOT NULL), sum(saved_micros)
    FROM inserted GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1, 3, 4, 5
    ON CONFLICT (tenant_id, day, feature, model, provider) DO UPDATE SET
        calls = d.calls + excluded.calls, input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cost_micros = d.cost_micros + excluded.cost_micros,
        cache_hits = d.cache_hits + excluded.cache_hits,
        saved_micros = d.saved_micros + excluded.saved_micros;
    INSERT INTO budget_usage AS u (budget_id, period_start, cost_micros, tokens)
    SELECT b.id, date_trunc(b.period, i.occurred_at AT TIME ZONE 'UTC')::date,
        sum(i.cost_micros), sum(i.input_tokens + i.output_tokens)
    FROM inserted i JOIN budgets b ON b.tenant_id = i.tenant_id AND b.feature IN ('', i.feature)
    WHERE i.cache_hit IS NULL
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (budget_id, period_start) DO UPDATE SET
        cost_micros = u.cost_micros + excluded.cost_micros, tokens = u.tokens + excluded.tokens;
    RETURN NULL;
END $$;
