-- The active list as it stands, with this node's clock, so a reader can tell which leases
-- ran out without trusting its own clock.
-- KEYS[1]  the active list   KEYS[2] the index's birth mark
-- ARGV[1]  a new birth mark, set if the index has none (it is new, or Redis lost it)
-- returns  {now (ms), birth mark, campaign, lease end, campaign, lease end, ...}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], ARGV[1], 'NX')
local out = {now, redis.call('GET', KEYS[2])}
for _, v in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do
  out[#out + 1] = v
end
return out
