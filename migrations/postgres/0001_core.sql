CREATE TABLE campaigns (
    id                   TEXT PRIMARY KEY,
    kind                 TEXT NOT NULL,
    sku                  TEXT NOT NULL,
    stock                BIGINT NOT NULL,
    per_user_limit       BIGINT NOT NULL,
    starts_at_ms         BIGINT,
    ends_at_ms           BIGINT,
    hold_seconds         BIGINT NOT NULL,
    group_size           BIGINT,
    group_window_seconds BIGINT,
    created_at_ms        BIGINT NOT NULL,
    stock_event_ms       BIGINT NOT NULL DEFAULT 0,
    stock_event_seq      BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE reservations (
    id              TEXT PRIMARY KEY,
    campaign_id     TEXT NOT NULL REFERENCES campaigns (id),
    user_id         TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    status          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    group_id        TEXT,
    idempotency_key TEXT,
    fingerprint     TEXT,
    event_ms        BIGINT NOT NULL,
    event_seq       BIGINT NOT NULL
);
CREATE INDEX reservations_by_campaign ON reservations (campaign_id, status);

CREATE TABLE events (
    cursor      BIGSERIAL PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    stream_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    payload     TEXT NOT NULL,
    UNIQUE (campaign_id, stream_id)
);
