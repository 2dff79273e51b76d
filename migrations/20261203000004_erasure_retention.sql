-- Tenant erasure and data retention.

-- The audit log stays append-only, with one exception: erasing a tenant replaces the tenant's id in
-- its audit rows by the erasure's pseudonym and drops their before/after values (which may name
-- the tenant's settings). Only ragq_erase_tenant does that, inside its transaction, for the tenant
-- it names; the time, actor and action of every row stay as they were.
CREATE OR REPLACE FUNCTION ragq_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.tenant_id = current_setting('ragq.erasing_tenant', true)
       AND NEW.id = OLD.id AND NEW.at = OLD.at AND NEW.actor = OLD.actor AND NEW.action = OLD.action
       AND NEW.tenant_id = current_setting('ragq.erasing_pseudonym', true)
       AND NEW.before IS NULL AND NEW.after IS NULL THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

-- The ledger's tables: kept as they are, or anonymized (the tenant's id replaced by a random
-- pseudonym, job ids by their MD5, tags but the feature dropped), so platform totals and provider
-- reconciliation still add up after an erasure.
CREATE FUNCTION ragq_ledger_tables() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['provider_calls', 'spend_daily', 'job_stats']
$$;

-- Erases tenant t: every row of every table with a tenant_id column (found in the catalog, so a
-- table added later is not forgotten), the rows hanging off them, its queued outbox messages, and
-- the tenant itself. The ledger is anonymized under `pseudonym`, or kept when keep_ledger. Fails
-- (and changes nothing) if any row of the tenant would remain. Returns the rows touched per table.
CREATE FUNCTION ragq_erase_tenant(t text, pseudonym text, keep_ledger boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    counts jsonb := '{}';
    n bigint;
    tbl text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = t) THEN
        RAISE EXCEPTION 'unknown tenant %', t USING ERRCODE = 'no_data_found';
    END IF;
    DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE tenant_id = t);
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('webhook_attempts', n);
    DELETE FROM outbox WHERE convert_from(body, 'UTF8')::jsonb ->> 'tenant' = t;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('outbox', n);
    IF NOT keep_ledger THEN
        UPDATE provider_calls SET tenant_id = pseudonym, job_id = md5(job_id),
            tags = CASE WHEN tags ? 'feature' THEN jsonb_build_object('feature', tags -> 'feature') ELSE '{}' END
        WHERE tenant_id = t;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('provider_calls (anonymized)', n);
        UPDATE spend_daily SET tenant_id = pseudonym WHERE tenant_id = t;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('spend_daily (anonymized)', n);
        UPDATE job_stats SET tenant_id = pseudonym WHERE tenant_id = t;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('job_stats (anonymized)', n);
    END IF;
    PERFORM set_config('ragq.erasing_tenant', t, true);
    PERFORM set_config('ragq.erasing_pseudonym', pseudonym, true);
    UPDATE audit_log SET tenant_id = pseudonym, before = NULL, after = NULL,
        target = CASE WHEN target = t THEN pseudonym ELSE target END
    WHERE tenant_id = t;
    GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object('audit_log (pseudonymized)', n);
    -- Every other table with a tenant's rows; partitions are reached through their parent.
    FOR tbl IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN pg_class k ON k.relname = c.table_name AND NOT k.relispartition
        WHERE c.table_schema = current_schema() AND c.column_name = 'tenant_id'
          AND c.table_name <> ALL (ARRAY['audit_log', 'tenants'] || ragq_ledger_tables())
        ORDER BY c.table_name
    LOOP
        EXECUTE format('DELETE FROM %I WHERE tenant_id = $1', tbl) USING t;
        GET DIAGNOSTICS n = ROW_COUNT; counts := counts || jsonb_build_object(tbl, n);
    END LOOP;
    DELETE FROM tenants WHERE id = t;
    -- The safety net: nothing of the tenant is left (but the ledger when it is kept).
    FOR tbl IN
        SELECT c.table_name FROM information_schema.columns c
        WHERE c.table_schema = current_schema() AND c.column_name = 'tenant_id'
          AND NOT (keep_ledger AND c.table_name LIKE ANY (SELECT unnest(ragq_ledger_tables()) || '%'))
    LOOP
        EXECUTE format('SELECT count(*) FROM %I WHERE tenant_id = $1', tbl) USING t INTO n;
        IF n > 0 THEN
            RAISE EXCEPTION 'erasure of % left % rows in %', t, n, tbl;
        END IF;
    END LOOP;
    RETURN counts;
END $$;

-- Retention: a finished job's input and result (and its webhook payloads) are purged after
-- retention.jobs_days; the row stays (state, times, error code, attempts) and says when.
ALTER TABLE jobs ADD COLUMN purged_at TIMESTAMPTZ;
ALTER TABLE webhook_deliveries ADD COLUMN purged_at TIMESTAMPTZ;
-- The purge finds old jobs by creation time (a finished job was created before it finished) through
-- a BRIN index, which costs the job path next to nothing.
CREATE INDEX jobs_created_brin ON jobs USING brin (created_at) WITH (autosummarize = on);
