-- Totals move with the ledger, in one place: every statement that inserts ledger rows (a booked
-- answer, a direct write, an expired intent booked as an estimate, a bulk import) advances the
-- daily aggregates and the usage of every budget the rows fall under, from the rows it really
-- inserted (rows skipped by ON CONFLICT DO NOTHING are not in the transition table), in the same
-- transaction. Until now each booking statement carried the same two CTEs, spliced in from Rust.
--
-- Aggregate and usage rows are upserted in key order: every worker's batches touch the same rows
-- (a tenant's day), and one global lock order means concurrent batches cannot deadlock.
CREATE FUNCTION ragq_advance_totals() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spend_daily AS d (day, tenant_id, feature, model, provider, calls, input_tokens,
        output_tokens, cost_micros)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date, tenant_id, feature, model, provider, count(*),
        sum(input_tokens), sum(output_tokens), sum(cost_micros)
    FROM inserted GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1, 3, 4, 5
    ON CONFLICT (tenant_id, day, feature, model, provider) DO UPDATE SET
        calls = d.calls + excluded.calls, input_tokens = d.input_tokens + excluded.input_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        cost_micros = d.cost_micros + excluded.cost_micros;
    INSERT INTO budget_usage AS u (budget_id, period_start, cost_micros, tokens)
    SELECT b.id, date_trunc(b.period, i.occurred_at AT TIME ZONE 'UTC')::date,
        sum(i.cost_micros), sum(i.input_tokens + i.output_tokens)
    FROM inserted i JOIN budgets b ON b.tenant_id = i.tenant_id AND b.feature IN ('', i.feature)
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (budget_id, period_start) DO UPDATE SET
        cost_micros = u.cost_micros + excluded.cost_micros, tokens = u.tokens + excluded.tokens;
    RETURN NULL;
END $$;

CREATE TRIGGER provider_calls_advance_totals
    AFTER INSERT ON provider_calls
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION ragq_advance_totals();
