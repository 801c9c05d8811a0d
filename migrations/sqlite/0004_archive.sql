-- See migrations/postgres/0004_archive.sql.
ALTER TABLE campaigns ADD COLUMN archived_at_ms INTEGER;
