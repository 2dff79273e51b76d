-- Live workers, by heartbeat. Each worker renews its row every few seconds and paces every rate-
-- limited model at (limit / live workers), so N workers never send N times a provider's limit.
-- A worker that dies stops renewing; its row expires and the others' shares grow back.
CREATE TABLE worker_leases (
    worker_id   TEXT PRIMARY KEY CHECK (length(worker_id) BETWEEN 1 AND 128),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX worker_leases_expiry ON worker_leases (expires_at);
