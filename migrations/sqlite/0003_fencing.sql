-- See migrations/postgres/0003_fencing.sql.
ALTER TABLE campaigns ADD COLUMN engine_epoch TEXT;

CREATE TABLE engine_epochs (
    epoch         TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL
);

CREATE TABLE dead_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id  TEXT NOT NULL,
    stream_id    TEXT NOT NULL,
    epoch        TEXT NOT NULL,
    type         TEXT NOT NULL,
    event        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    error        TEXT NOT NULL,
    failed_at_ms INTEGER NOT NULL,
    UNIQUE (campaign_id, stream_id, epoch)
);
