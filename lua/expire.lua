-- Expires held reservations whose expiry has passed; safe to run from many instances at once
-- (each run takes what is due at that moment; a second run finds nothing left).
-- KEYS[1]  campaign hash   KEYS[2] users hash   KEYS[3] expiry sorted set   KEYS[4] event stream
-- ARGV[1]  now (ms)        ARGV[2] at most this many
-- returns  how many expired
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local expired = 0
for _, id in ipairs(due) do
  local rk = KEYS[1] .. ':r:' .. id
  local r = redis.call('HMGET', rk, 'status', 'qty', 'user')
  if r[1] == 'held' then
    release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], rk, id, r, 'expired', ARGV[1])
    expired = expired + 1
  else
    redis.call('ZREM', KEYS[3], id)
  end
end
return expired
