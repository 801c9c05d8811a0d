-- held -> confirmed. A hold found past its expiry expires instead.
-- KEYS[1]  campaign hash   KEYS[2] reservations hash (lib.lua)   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] reservation id
-- A group member's group past its window fails first (the member is then `released`); the
-- member whose confirmation makes `size` forms the group.
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held'; or {'not_found'}
local r = get_reservation(KEYS[1], ARGV[2])
if not r then return {'not_found'} end
if r.group ~= '' then
  fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], r.group, ARGV[1])
  r = get_reservation(KEYS[1], ARGV[2])
end
local outcome = 'not_held'
if r.status == 'confirmed' then
  outcome = 'unchanged'
elseif r.status == 'held' then
  if tonumber(ARGV[1]) >= r.expires then
    release(KEYS[1], KEYS[3], ARGV[2], r, 'expired', ARGV[1])
  else
    local quantity = r.qty
    redis.call('HINCRBY', KEYS[1], 'held', -quantity)
    redis.call('HINCRBY', KEYS[1], 'confirmed', quantity)
    r.status = 'confirmed'
    put_reservation(KEYS[1], ARGV[2], r)
    emit(KEYS[3], ARGV[2], r, ARGV[1])
    if r.group ~= '' then
      local gk = KEYS[1] .. ':g:' .. r.group
      if redis.call('HINCRBY', gk, 'confirmed', 1) == tonumber(redis.call('HGET', gk, 'size')) then
        redis.call('HSET', gk, 'status', 'formed')
        redis.call('ZREM', KEYS[4], r.group)
        redis.call('HINCRBY', KEYS[1], 'gopen', -1)
        redis.call('HINCRBY', KEYS[1], 'gformed', 1)
        emit_group(KEYS[3], gk, r.group, ARGV[1])
      end
    end
    outcome = 'done'
  end
end
return answer_reservation(outcome, r)
