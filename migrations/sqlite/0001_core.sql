CREATE TABLE campaigns (
    id                   TEXT PRIMARY KEY,
    kind                 TEXT NOT NULL,
    sku                  TEXT NOT NULL,
    stock                INTEGER NOT NULL,
    per_user_limit       INTEGER NOT NULL,
    starts_at_ms         INTEGER,
    ends_at_ms           INTEGER,
    hold_seconds         INTEGER NOT NULL,
    group_size           INTEGER,
    group_window_seconds INTEGER,
    created_at_ms        INTEGER NOT NULL,
    stock_event_ms       INTEGER NOT NULL DEFAULT 0,
    stock_event_seq      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE reservations (
    id              TEXT PRIMARY KEY,
    campaign_id     TEXT NOT NULL REFERENCES campaigns (id),
    user_id         TEXT NOT NULL,
    quantity        INTEGER NOT NULL,
    status          TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    group_id        TEXT,
    idempotency_key TEXT,
    fingerprint     TEXT,
    event_ms        INTEGER NOT NULL,
    event_seq       INTEGER NOT NULL
);
CREATE INDEX reservations_by_campaign ON reservations (campaign_id, status);

CREATE TABLE events (
    cursor      INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id TEXT NOT NULL,
    stream_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    payload     TEXT NOT NULL,
    UNIQUE (campaign_id, stream_id)
);
