-- Opens a group: holds the group's whole quota (`size` units) and gives the opener the first
-- slot. Order of checks: campaign exists, idempotency key seen, kind, window, stock, limit.
-- KEYS[1] campaign hash   KEYS[2] group idempotency hash   KEYS[3] expiry list
-- KEYS[4] event stream    KEYS[5] a key that never exists (Keys::fresh: a half-moved slot refuses the script)   KEYS[6] group expiry sorted set
-- ARGV[1] now (ms)  ARGV[2] user  ARGV[3] scoped idempotency key  ARGV[4] fingerprint
-- ARGV[5] the new group's id  ARGV[6] the opener's reservation id
-- returns {'done', gid} | {'replay', gid} | {'key_reused'} | {refusal code}
local c = redis.call('HMGET', KEYS[1], 'kind', 'starts', 'ends', 'limit', 'hold', 'available', 'gsize', 'gwindow')
if not c[1] then return {'campaign_not_found'} end
local seen = redis.call('HGET', KEYS[2], ARGV[3])
if seen then
  local bar = string.find(seen, '|', 1, true)
  if string.sub(seen, bar + 1) ~= ARGV[4] then return {'key_reused'} end
  return {'replay', string.sub(seen, 1, bar - 1)}
end
if c[1] ~= 'group_buy' then return {'wrong_campaign_kind'} end
local now = tonumber(ARGV[1])
if c[2] ~= '' and now < tonumber(c[2]) then return {'not_started'} end
if c[3] ~= '' and now >= tonumber(c[3]) then return {'ended'} end
local size = tonumber(c[7])
if tonumber(c[6]) < size then return {'sold_out'} end
local had = tonumber(redis.call('HGET', KEYS[1], 'u:' .. ARGV[2]) or '0')
if had + 1 > tonumber(c[4]) then return {'limit_exceeded'} end

local gk = KEYS[1] .. ':g:' .. ARGV[5]
local expires = now + tonumber(c[8]) * 1000
redis.call('HINCRBY', KEYS[1], 'available', -size)
redis.call('HINCRBY', KEYS[1], 'held', size)
redis.call('HINCRBY', KEYS[1], 'gopen', 1)
redis.call('HSET', gk, 'leader', ARGV[2], 'size', size, 'status', 'open', 'created', now,
  'expires', expires, 'active', 0, 'confirmed', 0)
redis.call('ZADD', KEYS[6], expires, ARGV[5])
emit_group(KEYS[4], gk, ARGV[5], now)
add_member(KEYS, ARGV[5], ARGV[2], ARGV[6], now, c[5], ARGV[3], ARGV[4])
return {'done', ARGV[5]}
