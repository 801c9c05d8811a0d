-- A campaign shard's state for moving units between shards (see `engine::sharded`): what it
-- holds, what it has sent and not yet seen arrive, and its transfer version.
-- KEYS[1]  campaign (shard) hash
-- returns  {} if the shard is missing, else {stock, available, outgoing, version, total,
--          records} (`total`: the whole campaign's stock, kept by shard 0, '' elsewhere;
--          `records`: its idempotency records, as the sold-out gate counts them)
local c = redis.call('HMGET', KEYS[1], 'stock', 'available', 'xout', 'xv', 'total', 'records')
if not c[1] then return {} end
return {c[1], c[2], c[3] or '0', c[4] or '0', c[5] or '', c[6] or '0'}
