-- Webhooks may take their events in batches (contract v1.2 `max_batch`, 1..100): with n > 1
-- a delivery's body is {"events": [...]}, up to n feed items in cursor order.
ALTER TABLE webhooks ADD COLUMN max_batch BIGINT NOT NULL DEFAULT 1;
-- Creating a webhook is a creating POST like the others (contract v1.2): the request's
-- Idempotency-Key and the body's fingerprint, so a retry answers the same webhook.
ALTER TABLE webhooks ADD COLUMN idempotency_key TEXT;
ALTER TABLE webhooks ADD COLUMN fingerprint TEXT;
CREATE UNIQUE INDEX webhooks_by_idempotency_key ON webhooks (idempotency_key);
