-- The units a campaign (or a shard past the first) has available, as the engine had them when
-- the persister last read its events, with the stream position of the last event read then
-- (a write of an older read never overwrites a newer one). NULL: not known yet (a sharded
-- campaign before its first events, rows from before this step). The campaign list's
-- `status` filter reads it — an index kept by the persister — instead of asking the engine
-- about every campaign; the engine confirms each candidate.
ALTER TABLE campaigns ADD COLUMN available BIGINT;
ALTER TABLE campaigns ADD COLUMN available_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN available_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_shards ADD COLUMN available BIGINT;
ALTER TABLE campaign_shards ADD COLUMN available_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_shards ADD COLUMN available_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX campaigns_live_by_window ON campaigns (starts_at_ms, ends_at_ms) WHERE archived_at_ms IS NULL;
CREATE INDEX campaigns_sold_out ON campaigns (id) WHERE available = 0 AND archived_at_ms IS NULL;
