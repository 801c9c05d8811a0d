-- Expires held reservations whose expiry has passed; safe to run from many instances at once
-- (each run takes what is due at that moment; a second run finds nothing left).
-- Groups past their window fail first (their members are released), then holds expire.
-- KEYS[1]  campaign hash   KEYS[2] users hash   KEYS[3] expiry sorted set   KEYS[4] event stream
-- KEYS[5]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] at most this many holds
-- returns  how many reservations ended
local ended = 0
for _, gid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[1])) do
  ended = ended + fail_group_if_due(KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[4], gid, ARGV[1])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local rk = KEYS[1] .. ':r:' .. id
  local r = redis.call('HMGET', rk, 'status', 'qty', 'user', 'group')
  if r[1] == 'held' then
    release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], rk, id, r, 'expired', ARGV[1])
    ended = ended + 1
  else
    redis.call('ZREM', KEYS[3], id)
  end
end
return ended
