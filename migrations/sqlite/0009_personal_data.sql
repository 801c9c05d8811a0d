-- Personal data (contract v1.1): the key of the keyed hash that replaces user ids past the
-- retention (made once, kept here so pseudonyms stay stable across restarts unless
-- FLASHSALE_PSEUDONYM_KEY is set), and when each campaign's user ids were replaced.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
ALTER TABLE campaigns ADD COLUMN pseudonymised_at_ms BIGINT;
