-- Hot-SKU shards (contract v1.1 `shards`): a campaign's stock spread over `shards` shards that
-- decide on their own (see `src/engine/sharded.rs`). `campaigns.stock` stays the whole
-- campaign's stock. Each shard past the first is loaded into the engine under its own load
-- epoch (a cluster node may lose some shards of a campaign and not others), recorded here;
-- shard 0 is the campaign itself and keeps `campaigns.engine_epoch`.
ALTER TABLE campaigns ADD COLUMN shards BIGINT NOT NULL DEFAULT 1;
CREATE TABLE campaign_shards (
    -- `<campaign id>.<k>`, as events of the shard name their campaign
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    shard BIGINT NOT NULL,
    engine_epoch TEXT
);
