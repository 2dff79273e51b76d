-- Write-ahead call intents: before a worker sends a provider request, it durably records the call
-- with its worst-case cost. When the provider answers, the booking replaces the intent with the real
-- ledger row in one statement (and only if the intent is still there, so a call is booked once).
-- When the attempt ends, intents left behind belong to calls that failed without an answer and are
-- dropped. An intent whose worker died (older than the reservation TTL, its attempt no longer the
-- job's running one) becomes an `estimated` ledger row at its worst case: the provider may have
-- answered and billed a call whose answer the dead worker never booked, and spend is never lost.
-- Only what the estimate needs: the job's feature and tags are read from `jobs` if it is ever
-- booked. No index beyond the key: the table holds only calls in flight, and expiry scans it.
CREATE TABLE call_intents (
    tenant_id                    TEXT NOT NULL,
    job_id                       TEXT NOT NULL,
    attempt                      INT NOT NULL,
    call_index                   INT NOT NULL,
    provider                     TEXT NOT NULL,
    model                        TEXT NOT NULL,
    input_tokens                 BIGINT NOT NULL CHECK (input_tokens >= 0),
    output_tokens                BIGINT NOT NULL CHECK (output_tokens >= 0),
    input_price_micros_per_mtok  BIGINT NOT NULL CHECK (input_price_micros_per_mtok >= 0),
    output_price_micros_per_mtok BIGINT NOT NULL CHECK (output_price_micros_per_mtok >= 0),
    cost_micros                  BIGINT NOT NULL CHECK (cost_micros >= 0),
    -- When the call was about to be sent.
    occurred_at                  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, job_id, attempt, call_index)
);

-- A ledger row booked from an intent whose answer was never seen: its tokens and cost are the
-- call's worst case, not the provider's report. `ragq spend reconcile` shows what they came to.
ALTER TABLE provider_calls ADD COLUMN estimated BOOLEAN NOT NULL DEFAULT false;
-- Reconciliation reads them apart; they are rare, so a partial index keeps that cheap.
CREATE INDEX provider_calls_estimated ON provider_calls (provider, occurred_at) WHERE estimated;
