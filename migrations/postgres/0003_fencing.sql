-- The engine dataset (Redis epoch) each campaign's engine state was loaded under; events
-- decided under another dataset arrive too late to count and are set aside, not applied.
ALTER TABLE campaigns ADD COLUMN engine_epoch TEXT;

-- Every engine dataset this database has served: a Redis holding campaigns under an epoch
-- not listed here belongs to another database and is refused at start.
CREATE TABLE engine_epochs (
    epoch         TEXT PRIMARY KEY,
    first_seen_ms BIGINT NOT NULL
);

-- Events the database refused (a constraint) or that arrived from a dataset the campaign was
-- rebuilt without (fenced): kept with the reason, for operators; refused ones can be retried.
CREATE TABLE dead_events (
    id           BIGSERIAL PRIMARY KEY,
    campaign_id  TEXT NOT NULL,
    stream_id    TEXT NOT NULL,
    epoch        TEXT NOT NULL,
    type         TEXT NOT NULL,
    event        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    error        TEXT NOT NULL,
    failed_at_ms BIGINT NOT NULL,
    UNIQUE (campaign_id, stream_id, epoch)
);
