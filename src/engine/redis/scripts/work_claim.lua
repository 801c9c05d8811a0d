-- Claims campaigns whose due time came, for one reaper: each is pushed `claim` ms ahead, so
-- other instances' reapers skip it meanwhile and a reaper that dies leaves it due again.
-- Active campaigns are pushed ahead too but not handed out: reapers visit them anyway, and
-- their retirement files their next due time.
-- KEYS[1]  the active list   KEYS[2] the due list
-- ARGV[1]  now (ms)   ARGV[2] claim (ms)   ARGV[3] how many at most
-- returns  {claimed until (ms), campaign, ...}
local due = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
local out = {until_ms}
for _, c in ipairs(due) do
  redis.call('ZADD', KEYS[2], until_ms, c)
  if not redis.call('ZSCORE', KEYS[1], c) then out[#out + 1] = c end
end
return out
