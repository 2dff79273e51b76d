-- Prompt templates: each save of a prompt is a new immutable version (1, 2, 3 ...) of (tenant,
-- name); labels (`production`, `staging` ...) point at versions and move. The operator's shared
-- prompts have tenant '' (no tenant has that id), which a tenant's own prompt of the same name
-- hides.
CREATE TABLE prompt_versions (
    tenant_id        TEXT NOT NULL,
    name             TEXT NOT NULL,
    version          INT NOT NULL CHECK (version >= 1),
    system_template  TEXT,
    user_template    TEXT NOT NULL,
    -- JSON Schema of the variables, and defaults for the job (policy, max_tokens, temperature).
    variables_schema JSONB NOT NULL DEFAULT '{}',
    defaults         JSONB NOT NULL DEFAULT '{}',
    created_by       TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version)
);

CREATE TABLE prompt_labels (
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    label      TEXT NOT NULL,
    version    INT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, label),
    FOREIGN KEY (tenant_id, name, version) REFERENCES prompt_versions ON DELETE CASCADE
);
