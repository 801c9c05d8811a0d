-- Expires held reservations whose expiry has passed; safe to run from many instances at once
-- (each run takes what is due at that moment; a second run finds nothing left).
-- Groups past their window fail first (their members are released), then holds expire.
-- The expiry list holds reservation ids in creation order. A campaign's holds all last
-- `hold` seconds, so that is also expiry order: the walk pops ids from the head while they
-- are due or no longer held (confirmed, cancelled, released), and stops at the first hold
-- still running. Instances' clocks differ by a few ms at most, which can only delay a
-- hold's expiry by as much.
-- KEYS[1]  campaign hash   KEYS[2] expiry list   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set   KEYS[5] reservations hash (lib.lua; declared, so a
--          half-moved slot refuses the script instead of failing it between two holds)
-- ARGV[1]  now (ms)        ARGV[2] look at most this many ids
-- ARGV[3]  retention (ms): reservations (outside groups) that ended at least this long ago
--          leave Redis — their record goes, their idempotency record stays, so a replay of
--          their key finds the id and is answered from the database
-- returns  {how many reservations ended, how many ids left the list, how many were forgotten}
local now = tonumber(ARGV[1])
local ended = 0
for _, gid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])) do
  ended = ended + fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], gid, ARGV[1])
end
local popped = 0
-- Extended holds (extend.lua) end later than their creation order says: met at the head,
-- one still running moves to the extended set, sorted by expiry, and the walk goes on.
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0') * 1000
local extended = KEYS[1] .. ':xexp'
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)) do
  local r = get_reservation(KEYS[1], id)
  if r and r.status == 'held' then
    if now < r.expires then
      if r.expires <= r.created + hold then break end
      redis.call('ZADD', extended, r.expires, id)
    else
      release(KEYS[1], KEYS[3], id, r, 'expired', ARGV[1])
      ended = ended + 1
    end
  end
  popped = popped + 1
end
if popped > 0 then redis.call('LTRIM', KEYS[2], popped, -1) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', extended, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])) do
  local r = get_reservation(KEYS[1], id)
  if r and r.status == 'held' and now < r.expires then
    redis.call('ZADD', extended, r.expires, id)
  else
    if r and r.status == 'held' then
      release(KEYS[1], KEYS[3], id, r, 'expired', ARGV[1])
      ended = ended + 1
    end
    redis.call('ZREM', extended, id)
  end
end
local gone = 0
local ended_key = KEYS[1] .. ':ended'
for _, entry in ipairs(redis.call('LRANGE', ended_key, 0, tonumber(ARGV[2]) - 1)) do
  local bar = string.find(entry, '|', 1, true)
  if tonumber(string.sub(entry, 1, bar - 1)) + tonumber(ARGV[3]) > now then break end
  drop_reservation(KEYS[1], string.sub(entry, bar + 1))
  gone = gone + 1
end
if gone > 0 then redis.call('LTRIM', ended_key, gone, -1) end
return {ended, popped, gone}
