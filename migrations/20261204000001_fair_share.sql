-- Fair share between tenants (src/jobs/dispatch.rs). Workers move every message from ragq.jobs into
-- `jobs` as `queued` (ingest) and acknowledge it; they then take jobs from Postgres tenant by
-- tenant, the tenant furthest behind its weighted share first, within its in-flight cap.

-- When a queued job may run (its retry delay), and its priority within its tenant. A queued row
-- with no ready_at was written by the api or a pipeline run and waits for its message.
ALTER TABLE jobs
    ADD COLUMN ready_at    TIMESTAMPTZ,
    ADD COLUMN priority    SMALLINT NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1 AND 1),
    -- The worker running it (`worker_leases.worker_id`): when its lease ends the job is queued again.
    ADD COLUMN holder      TEXT,
    -- The submitter's W3C trace context, continued by whichever worker runs the job.
    ADD COLUMN traceparent TEXT,
    -- What the job's redaction policy found, and (sealed) the values a `restore` policy puts back
    -- into the result; cleared when the job ends.
    ADD COLUMN redaction   JSONB;

UPDATE jobs SET ready_at = created_at WHERE state = 'queued';

-- A tenant's next jobs, best priority first, then oldest ready.
CREATE INDEX jobs_ready ON jobs (tenant_id, priority DESC, ready_at) WHERE state = 'queued';
-- Running jobs (a running job names its worker, `holder`): a capped tenant's count, and the jobs of
-- workers whose lease ended. Its predicate names `holder`, not `state`: statements that look a
-- running job up by its key must not pick this (much smaller, but churning) index over the primary
-- key. Jobs left running by an earlier version get a holder no lease has, so the first sweep queues
-- them again.
UPDATE jobs SET holder = '' WHERE state = 'running';
CREATE INDEX jobs_held ON jobs (tenant_id, holder) WHERE holder IS NOT NULL;
-- Dispatch reads the head of each tenant's queue, where every dispatched job leaves dead index
-- entries until vacuum: vacuum jobs after 2% of it changed, not the default 20%.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02);

-- Per-tenant overrides of the plan's weight and in-flight cap.
ALTER TABLE tenants
    ADD COLUMN share_weight  DOUBLE PRECISION CHECK (share_weight > 0 AND share_weight <= 1000),
    ADD COLUMN max_in_flight INT CHECK (max_in_flight > 0);

-- The dispatcher's state of each tenant: its weight and cap as the workers last resolved them, how
-- many jobs it has queued (taken in, not yet dispatched), and its virtual time (work served / weight). The tenant with work and
-- the least virtual time is served next; a tenant that had nothing queued starts at the least
-- virtual time of those that do, so an idle spell earns no burst.
CREATE TABLE tenant_shares (
    tenant_id     TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    weight        DOUBLE PRECISION NOT NULL DEFAULT 1 CHECK (weight > 0),
    max_in_flight INT CHECK (max_in_flight > 0),
    queued        BIGINT NOT NULL DEFAULT 0 CHECK (queued >= 0),
    vtime         DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX tenant_shares_waiting ON tenant_shares (vtime) WHERE queued > 0;

INSERT INTO tenant_shares (tenant_id, queued)
SELECT t.id, (SELECT count(*) FROM jobs j WHERE j.tenant_id = t.id AND j.state = 'queued')
FROM tenants t;

-- When a tenant's earliest queued job may run: a tenant whose queued jobs all wait out retry delays
-- is passed over until then.
ALTER TABLE tenant_shares ADD COLUMN next_ready_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity';

-- Every tenant has its dispatch state from birth, so workers only ever update it.
CREATE FUNCTION ragq_tenant_share_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_shares (tenant_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_share_row AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION ragq_tenant_share_row();
