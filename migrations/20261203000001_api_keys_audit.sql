-- Governance, part one: API keys that are many per tenant, scoped, expiring, revocable and rotated
-- with a grace period; and an append-only audit log of every administrative change.

-- API keys. Only SHA-256 hashes of the secrets are stored (a random 256-bit secret needs no slow
-- hash). Rotation keeps the id (so limits, audit and last-used stay with the key) and moves the
-- old hash to previous_hash, accepted until previous_until.
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY CHECK (id ~ '^key_[0-9a-f]{16}$'),
    -- NULL: an operator key, which acts for no tenant and reads all of them.
    tenant_id      TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    name           TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    scopes         TEXT[] NOT NULL CHECK (
                       cardinality(scopes) > 0
                       AND scopes <@ ARRAY['jobs:write', 'jobs:read', 'spend:read', 'pipelines:read',
                                           'pipelines:write', 'prompts:write', 'operator']),
    secret_hash    BYTEA NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    previous_hash  BYTEA UNIQUE CHECK (length(previous_hash) = 32),
    previous_until TIMESTAMPTZ,
    expires_at     TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at     TIMESTAMPTZ,
    last_used_at   TIMESTAMPTZ,
    revoked_at     TIMESTAMPTZ,
    -- An operator key is exactly a key without a tenant.
    CHECK ((tenant_id IS NULL) = ('operator' = ANY (scopes))),
    CHECK ((previous_hash IS NULL) = (previous_until IS NULL))
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
-- A name is unique among a tenant's live keys (a revoked key's name may be used again).
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (coalesce(tenant_id, ''), name) WHERE revoked_at IS NULL;

-- Each tenant's one key so far becomes its key "default" with every tenant scope.
INSERT INTO api_keys (id, tenant_id, name, scopes, secret_hash, created_at)
SELECT 'key_' || substr(md5(random()::text || id), 1, 16), id, 'default',
       ARRAY['jobs:write', 'jobs:read', 'spend:read', 'pipelines:read', 'pipelines:write', 'prompts:write'],
       api_key_hash, created_at
FROM tenants WHERE api_key_hash IS NOT NULL;
ALTER TABLE tenants DROP COLUMN api_key_hash;

-- The audit log: one row per administrative change, written in the change's own transaction.
-- It never holds a secret or tenant content: before/after hold settings, and content (a job
-- template's input) only as a SHA-256.
CREATE TABLE audit_log (
    id         BIGSERIAL PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- `key:<key id>` over HTTP, `cli:<OS user>` from the command line.
    actor      TEXT NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    -- What was done, as `<noun>.<verb>`: tenant.create, key.rotate, budget.set, ...
    action     TEXT NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    -- The tenant the change concerns (kept after the tenant is erased: no foreign key).
    tenant_id  TEXT,
    -- What was changed: a key id, a pipeline name, a budget's feature and period, ...
    target     TEXT NOT NULL,
    before     JSONB,
    after      JSONB
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);
CREATE INDEX audit_log_at ON audit_log USING brin (at);

-- Append-only: nothing may change or remove an audit row (TRUNCATE included).
CREATE FUNCTION ragq_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION ragq_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ragq_audit_append_only();

-- A dashboard session remembers the key it was opened with, and ends when that key is revoked or
-- expires (NULL: the environment's operator key). Sessions from before keys had ids end now.
DELETE FROM dashboard_sessions;
ALTER TABLE dashboard_sessions ADD COLUMN key_id TEXT REFERENCES api_keys (id) ON DELETE CASCADE;
