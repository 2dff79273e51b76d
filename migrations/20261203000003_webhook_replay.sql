-- Webhook replay: a replayed delivery goes back to pending with its id (the webhook-id receivers
-- dedupe on) and a fresh allowance of attempts, counted from attempts_base (its attempts before
-- the replay); attempt numbers keep rising, so no attempt row is overwritten.
ALTER TABLE webhook_deliveries ADD COLUMN attempts_base INT NOT NULL DEFAULT 0
    CHECK (attempts_base >= 0);
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_attempts_base
    CHECK (attempts_base <= attempts);
-- Replays find a tenant's deliveries by job through the (tenant_id, job_id, event_type) key, and
-- by time through the BRIN index on created_at: no index is added to the write path.
