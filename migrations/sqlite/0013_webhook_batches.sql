-- Webhooks may take their events in batches (contract v1.2 `max_batch`, 1..100): with n > 1
-- a delivery's body is {"events": [...]}, up to n feed items in cursor order.
ALTER TABLE webhooks ADD COLUMN max_batch BIGINT NOT NULL DEFAULT 1;
