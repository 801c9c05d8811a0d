-- Announces that a campaign is about to change: it stays in the active list until at least
-- `lease` ms from now by this node's clock (a later lease is never shortened). Every writer
-- announces before it writes and again before its lease runs out, so background work finds
-- every campaign that changed without visiting the ones that did not (`engine::work`).
-- KEYS[1]  the active list (sorted set: campaign -> end of its lease, ms)
-- ARGV[1]  campaign   ARGV[2] lease (ms)
-- returns  the lease's end (ms, this node's clock)
local t = redis.call('TIME')
local ends = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', ends, ARGV[1])
return ends
