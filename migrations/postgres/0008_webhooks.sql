-- Webhook subscriptions and their delivery attempts (contract v1.1). `delivered_cursor`: every
-- feed event up to it was delivered (or given up on); the lease lets one instance at a time
-- deliver a webhook's events, in cursor order.
CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    event_types      TEXT NOT NULL,
    campaign_id      TEXT,
    secret           TEXT NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    deleted_at_ms    BIGINT,
    delivered_cursor BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until_ms   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE webhook_deliveries (
    id           BIGSERIAL PRIMARY KEY,
    webhook_id   TEXT NOT NULL,
    event_cursor BIGINT NOT NULL,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    at_ms        BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id);
