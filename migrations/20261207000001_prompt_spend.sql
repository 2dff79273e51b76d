-- Prompt templates in the job path: a label may split traffic between versions, and every ledger
-- row names the prompt version its call rendered, so spend and latency report by prompt.

-- A weighted split between versions ([{"version": 3, "weight": 70}, ...]): a job resolving the
-- label gets one of them by a hash of its id. `version` stays the label's main version.
ALTER TABLE prompt_labels ADD COLUMN split JSONB;

-- '' and 0 for calls of jobs that named no saved prompt.
ALTER TABLE provider_calls
    ADD COLUMN prompt TEXT NOT NULL DEFAULT '',
    ADD COLUMN prompt_version INT NOT NULL DEFAULT 0;
ALTER TABLE spend_daily
    ADD COLUMN prompt TEXT NOT NULL DEFAULT '',
    ADD COLUMN prompt_version INT NOT NULL DEFAULT 0,
    -- The provider calls' summed latency: the mean is latency_ms / calls.
    ADD COLUMN latency_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE spend_daily DROP CONSTRAINT spend_daily_pkey,
    ADD PRIMARY KEY (tenant_id, day, feature, model, provider, prompt, prompt_version);

CREATE OR REPLACE FUNCTION ragq_advance_totals() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spend_daily AS d (day, tenant_id, feature, model, provider, prompt,
        prompt_version, calls, input_tokens, output_tokens, cost_micros, cache_hits, saved_micros,
        latency_ms)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date, tenant_id, feature, model, provider, prompt,
        prompt_version, count(*) FILTER (WHERE cache_hit IS NULL), sum(input_tokens),
        sum(output_tokens), sum(cost_micros), count(*) FILTER (WHERE cache_hit IS NOT NULL),
        sum(saved_micros), coalesce(sum(latency_ms) FILTER (WHERE cache_hit IS NULL), 0)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 2, 1, 3, 4, 5, 6, 7
    ON CONFLICT (tenant_id, day, feature, model, provider, prompt, prompt_version) DO UPDATE SET
        calls = d.calls + excluded.calls, input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cost_micros = d.cost_micros + excluded.cost_micros,
        cache_hits = d.cache_hits + excluded.cache_hits,
        saved_micros = d.saved_micros + excluded.saved_micros,
        latency_ms = d.latency_ms + excluded.latency_ms;
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
