-- How far past created_at + hold_seconds the store may extend a hold (POST
-- /v1/reservations/{id}/extend); campaigns made before extensions get the default.
ALTER TABLE campaigns ADD COLUMN max_extend_seconds BIGINT NOT NULL DEFAULT 300;
