-- held -> confirmed. A hold found past its expiry expires instead.
-- KEYS[1]  campaign hash   KEYS[2] reservation hash   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] reservation id
-- A group member's group past its window fails first (the member is then `released`); the
-- member whose confirmation makes `size` forms the group.
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held'; or {'not_found'}
local r = redis.call('HMGET', KEYS[2], 'status', 'qty', 'user', 'group', 'expires')
if not r[1] then return {'not_found'} end
if r[4] and r[4] ~= '' then
  fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], r[4], ARGV[1])
  r = redis.call('HMGET', KEYS[2], 'status', 'qty', 'user', 'group', 'expires')
end
local outcome = 'not_held'
if r[1] == 'confirmed' then
  outcome = 'unchanged'
elseif r[1] == 'held' then
  if tonumber(ARGV[1]) >= tonumber(r[5]) then
    release(KEYS[1], KEYS[3], KEYS[2], ARGV[2], r, 'expired', ARGV[1])
  else
    local quantity = tonumber(r[2])
    redis.call('HINCRBY', KEYS[1], 'held', -quantity)
    redis.call('HINCRBY', KEYS[1], 'confirmed', quantity)
    redis.call('HSET', KEYS[2], 'status', 'confirmed')
    emit(KEYS[3], KEYS[2], ARGV[2], ARGV[1])
    if r[4] and r[4] ~= '' then
      local gk = KEYS[1] .. ':g:' .. r[4]
      if redis.call('HINCRBY', gk, 'confirmed', 1) == tonumber(redis.call('HGET', gk, 'size')) then
        redis.call('HSET', gk, 'status', 'formed')
        redis.call('ZREM', KEYS[4], r[4])
        redis.call('HINCRBY', KEYS[1], 'gopen', -1)
        redis.call('HINCRBY', KEYS[1], 'gformed', 1)
        emit_group(KEYS[3], gk, r[4], ARGV[1])
      end
    end
    outcome = 'done'
  end
end
local now = redis.call('HMGET', KEYS[2], 'user', 'qty', 'status', 'created', 'expires', 'group')
return {outcome, now[1], now[2], now[3], now[4], now[5], now[6] or ''}
