-- Webhook secrets sealed at rest (`enc:v1:…`, see src/keyring.rs; sealed by ragq's own data
-- migration once a key is configured, since the key is not in the database), and the secret
-- before a rotation, which keeps signing beside the new one until its grace period ends.
ALTER TABLE tenants DROP CONSTRAINT tenants_webhook_secret_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_webhook_secret_stored
    CHECK (webhook_secret LIKE 'whsec\_%' OR webhook_secret LIKE 'enc:v1:%');
ALTER TABLE tenants ADD COLUMN previous_webhook_secret TEXT
    CHECK (previous_webhook_secret LIKE 'whsec\_%' OR previous_webhook_secret LIKE 'enc:v1:%');
ALTER TABLE tenants ADD COLUMN previous_webhook_secret_until TIMESTAMPTZ;
ALTER TABLE tenants ADD CONSTRAINT tenants_previous_webhook_secret_until
    CHECK ((previous_webhook_secret IS NULL) = (previous_webhook_secret_until IS NULL));
