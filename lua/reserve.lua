-- Decides one reservation attempt. Order of checks: campaign exists, idempotency key seen,
-- kind, window, stock, per-user limit (see src/engine/mod.rs for why).
-- KEYS[1]  campaign hash (config, counters, `u:<user>` counts, `k:<key>` idempotency records)
-- KEYS[2]  expiry list     KEYS[3]  the new reservation's hash     KEYS[4] event stream
-- KEYS[5]  records list (every idempotency record in creation order, for the sold-out gate)
-- ARGV[1]  now (ms)   ARGV[2] user id   ARGV[3] quantity   ARGV[4] scoped idempotency key
-- ARGV[5]  fingerprint of the request body   ARGV[6] the new reservation's id
-- ARGV[7]  attempts one user may make on this campaign per second, across every instance
--          (0: no limit); counted in `<campaign>:rl:<user>:<second>`, which expires
-- returns  {'reserved', created, expires, available}
--        | {'replay', id, user, quantity, created, expires}
--        | {'replay_gone', id}: the key's reservation ended and left Redis (retention)
--        | {'key_reused'} | {'rate_limited'} | {refusal code}
-- Six redis.calls on success, one on a refusal: every read the decision needs is one HMGET
-- of the campaign hash, and the campaign's side of the change is one HSET.
local key, user = 'k:' .. ARGV[4], 'u:' .. ARGV[2]
local c = redis.call('HMGET', KEYS[1], 'kind', 'starts', 'ends', 'limit', 'hold', 'available',
  'held', 'records', key, user)
if not c[1] then return {'campaign_not_found'} end

local seen = c[9]
if seen then
  local bar = string.find(seen, '|', 1, true)
  local id = string.sub(seen, 1, bar - 1)
  if string.sub(seen, bar + 1) ~= ARGV[5] then return {'key_reused'} end
  local r = redis.call('HMGET', KEYS[1] .. ':r:' .. id, 'user', 'qty', 'created', 'expires')
  if not r[1] then return {'replay_gone', id} end
  return {'replay', id, r[1], r[2], r[3], r[4]}
end

if ARGV[7] ~= '0' then
  local counter = KEYS[1] .. ':rl:' .. ARGV[2] .. ':' .. math.floor(tonumber(ARGV[1]) / 1000)
  local attempts = redis.call('INCR', counter)
  if attempts == 1 then redis.call('PEXPIRE', counter, 2000) end
  if attempts > tonumber(ARGV[7]) then return {'rate_limited'} end
end

if c[1] ~= 'flash_sale' then return {'wrong_campaign_kind'} end
local now = tonumber(ARGV[1])
if c[2] ~= '' and now < tonumber(c[2]) then return {'not_started'} end
if c[3] ~= '' and now >= tonumber(c[3]) then return {'ended'} end

local quantity = tonumber(ARGV[3])
local available = tonumber(c[6])
if available < quantity then return {'sold_out'} end
local had = tonumber(c[10] or '0')
if had + quantity > tonumber(c[4]) then return {'limit_exceeded'} end

local expires = now + tonumber(c[5]) * 1000
redis.call('HSET', KEYS[1], 'available', available - quantity, 'held', tonumber(c[7]) + quantity,
  'records', tonumber(c[8]) + 1, key, ARGV[6] .. '|' .. ARGV[5], user, had + quantity)
redis.call('HSET', KEYS[3], 'user', ARGV[2], 'qty', quantity, 'status', 'held',
  'created', now, 'expires', expires)
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('RPUSH', KEYS[5], ARGV[4] .. US .. ARGV[6] .. '|' .. ARGV[5])
emit_values(KEYS[4], now, ARGV[6], ARGV[2], quantity, 'held', now, expires, '', ARGV[4], ARGV[5])
return {'reserved', now, expires, available - quantity}
