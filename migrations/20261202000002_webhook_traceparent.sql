-- The trace of the job a webhook delivery reports on, so that its retries, sent later by whichever
-- worker leases them, still appear in that job's trace. NULL when traces were off.
ALTER TABLE webhook_deliveries ADD COLUMN traceparent TEXT;
