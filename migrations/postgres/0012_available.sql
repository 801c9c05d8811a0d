-- The units a campaign (or a shard past the first) has available, as the engine had them when
-- the persister last read its events, with the stream position of the last event read then
-- (a write of an older read never overwrites a newer one). A new campaign starts with its
-- stock (a sharded one: shard 0's row with the whole stock until its first events are read,
-- the other shards' unknown); NULL: not known (rows from before this step). The campaign list's
-- `status` filter reads it — an index kept by the persister — instead of asking the engine
-- about every campaign; the engine confirms each candidate.
ALTER TABLE campaigns ADD COLUMN available BIGINT;
ALTER TABLE campaigns ADD COLUMN available_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN available_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_shards ADD COLUMN available BIGINT;
ALTER TABLE campaign_shards ADD COLUMN available_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_shards ADD COLUMN available_seq BIGINT NOT NULL DEFAULT 0;
-- The background passes' own questions, each answered from an index rather than a scan of
-- the catalogue: the open waiting rooms (admission, every second), the live campaigns by end
-- (archive), the archived ones not yet pseudonymised (retention); and the list's windows.
CREATE INDEX campaigns_live_by_window ON campaigns (starts_at_ms, ends_at_ms) WHERE archived_at_ms IS NULL;
CREATE INDEX campaigns_live_by_end ON campaigns (ends_at_ms) WHERE archived_at_ms IS NULL;
CREATE INDEX campaigns_queued ON campaigns (id) WHERE queue_admit_per_second IS NOT NULL AND archived_at_ms IS NULL;
CREATE INDEX campaigns_to_pseudonymise ON campaigns (ends_at_ms) WHERE archived_at_ms IS NOT NULL AND pseudonymised_at_ms IS NULL;
CREATE INDEX campaigns_sold_out ON campaigns (id) WHERE available = 0 AND archived_at_ms IS NULL;
CREATE INDEX campaigns_available_unknown ON campaigns (id) WHERE available IS NULL AND archived_at_ms IS NULL;
