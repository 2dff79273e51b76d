-- Bring your own key: a tenant's own API key per provider, always sealed (src/keyring.rs); and the
-- scope that lets a tenant's API key manage them.
CREATE TABLE tenant_provider_keys (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider       TEXT NOT NULL CHECK (length(provider) BETWEEN 1 AND 64),
    sealed_key     TEXT NOT NULL CHECK (sealed_key LIKE 'enc:v1:%'),
    -- When the provider refuses the key, calls may be made again with the operator's.
    allow_fallback BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, provider)
);

ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check CHECK (
    cardinality(scopes) > 0
    AND scopes <@ ARRAY['jobs:write', 'jobs:read', 'spend:read', 'pipelines:read', 'pipelines:write',
                        'prompts:write', 'provider_keys:write', 'operator']);
