-- held -> held until later: expires becomes max(expires, now + seconds), at most
-- created + hold + max_extend. A hold found past its expiry expires instead, so a hold is
-- never both extended and expired (the reaper runs this same check in expire.lua).
-- KEYS[1]  campaign hash   KEYS[2] reservations hash (lib.lua)   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] reservation id     ARGV[3] seconds asked for
-- A group member's group past its window fails first (the member is then `released`).
-- The expiry list keeps holds in creation order; an extended hold is moved out of it into
-- `<campaign>:xexp` (sorted by expiry) when the reaper reaches it (expire.lua).
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held' | 'exceeded'; or {'not_found'}
local r = get_reservation(KEYS[1], ARGV[2])
if not r then return {'not_found'} end
if r.group ~= '' then
  fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], r.group, ARGV[1])
  r = get_reservation(KEYS[1], ARGV[2])
end
local outcome = 'not_held'
local now = tonumber(ARGV[1])
if r.status == 'held' then
  if now >= r.expires then
    release(KEYS[1], KEYS[3], ARGV[2], r, 'expired', ARGV[1])
  else
    local c = redis.call('HMGET', KEYS[1], 'hold', 'maxext')
    local cap = r.created + (tonumber(c[1]) + tonumber(c[2] or '300')) * 1000
    local asked = now + tonumber(ARGV[3]) * 1000
    if asked > cap then
      outcome = 'exceeded'
    elseif asked <= r.expires then
      outcome = 'unchanged'
    else
      r.expires = asked
      put_reservation(KEYS[1], ARGV[2], r)
      local buf = {}
      push_reservation_event(buf, ARGV[1], ARGV[2], r.user, r.qty, r.status, r.created,
        r.expires, r.group, nil, nil, 'extended')
      redis.call('XADD', KEYS[3], '*', 'e', table.concat(buf))
      -- Already moved out of the expiry list: keep its place in the extended set current.
      if redis.call('ZSCORE', KEYS[1] .. ':xexp', ARGV[2]) then
        redis.call('ZADD', KEYS[1] .. ':xexp', asked, ARGV[2])
      end
      outcome = 'done'
    end
  end
end
return answer_reservation(outcome, r)
