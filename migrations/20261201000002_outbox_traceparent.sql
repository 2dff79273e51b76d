-- The trace a scheduled job belongs to: the pipeline run's W3C traceparent, published with the
-- message as its `traceparent` header (null when traces are off).
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
