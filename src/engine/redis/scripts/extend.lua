-- held -> held until later: expires becomes max(expires, now + seconds), at most
-- created + hold + max_extend. A hold found past its expiry expires instead, so a hold is
-- never both extended and expired (the reaper runs this same check in expire.lua).
-- KEYS[1]  campaign hash   KEYS[2] reservation hash   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] reservation id     ARGV[3] seconds asked for
-- A group member's group past its window fails first (the member is then `released`).
-- The expiry list keeps holds in creation order; an extended hold is moved out of it into
-- `<campaign>:xexp` (sorted by expiry) when the reaper reaches it (expire.lua).
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held' | 'exceeded'; or {'not_found'}
local r = redis.call('HMGET', KEYS[2], 'status', 'qty', 'user', 'group', 'expires', 'created')
if not r[1] then return {'not_found'} end
if r[4] and r[4] ~= '' then
  fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], r[4], ARGV[1])
  r = redis.call('HMGET', KEYS[2], 'status', 'qty', 'user', 'group', 'expires', 'created')
end
local outcome = 'not_held'
local now = tonumber(ARGV[1])
if r[1] == 'held' then
  if now >= tonumber(r[5]) then
    release(KEYS[1], KEYS[3], KEYS[2], ARGV[2], r, 'expired', ARGV[1])
  else
    local c = redis.call('HMGET', KEYS[1], 'hold', 'maxext')
    local cap = tonumber(r[6]) + (tonumber(c[1]) + tonumber(c[2] or '300')) * 1000
    local asked = now + tonumber(ARGV[3]) * 1000
    if asked > cap then
      outcome = 'exceeded'
    elseif asked <= tonumber(r[5]) then
      outcome = 'unchanged'
    else
      redis.call('HSET', KEYS[2], 'expires', asked)
      local e = redis.call('HMGET', KEYS[2], 'user', 'qty', 'status', 'created', 'expires', 'group')
      local buf = {}
      push_reservation_event(buf, ARGV[1], ARGV[2], e[1], e[2], e[3], e[4], e[5], e[6], nil, nil,
        'extended')
      redis.call('XADD', KEYS[3], '*', 'e', table.concat(buf))
      -- Already moved out of the expiry list: keep its place in the extended set current.
      if redis.call('ZSCORE', KEYS[1] .. ':xexp', ARGV[2]) then
        redis.call('ZADD', KEYS[1] .. ':xexp', asked, ARGV[2])
      end
      outcome = 'done'
    end
  end
end
local s = redis.call('HMGET', KEYS[2], 'user', 'qty', 'status', 'created', 'expires', 'group')
return {outcome, s[1], s[2], s[3], s[4], s[5], s[6] or ''}
