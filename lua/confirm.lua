-- held -> confirmed. A hold found past its expiry expires instead.
-- KEYS[1]  campaign hash   KEYS[2] users hash   KEYS[3] expiry sorted set   KEYS[4] reservation hash
-- KEYS[5]  event stream
-- ARGV[1]  now (ms)        ARGV[2] reservation id
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held'; or {'not_found'}
local r = redis.call('HMGET', KEYS[4], 'status', 'qty', 'user', 'expires')
if not r[1] then return {'not_found'} end
local outcome = 'not_held'
if r[1] == 'confirmed' then
  outcome = 'unchanged'
elseif r[1] == 'held' then
  if tonumber(ARGV[1]) >= tonumber(r[4]) then
    release(KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[4], ARGV[2], r, 'expired', ARGV[1])
  else
    local quantity = tonumber(r[2])
    redis.call('HINCRBY', KEYS[1], 'held', -quantity)
    redis.call('HINCRBY', KEYS[1], 'confirmed', quantity)
    redis.call('ZREM', KEYS[3], ARGV[2])
    redis.call('HSET', KEYS[4], 'status', 'confirmed')
    emit(KEYS[5], KEYS[4], ARGV[2], ARGV[1])
    outcome = 'done'
  end
end
local now = redis.call('HMGET', KEYS[4], 'user', 'qty', 'status', 'created', 'expires', 'group')
return {outcome, now[1], now[2], now[3], now[4], now[5], now[6] or ''}
