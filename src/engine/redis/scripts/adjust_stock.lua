-- Adds or withdraws units; never withdraws more than is available.
-- KEYS[1]  campaign hash   KEYS[2] event stream
-- ARGV[1]  delta (integer, non-zero)   ARGV[2] the caller's scoped idempotency key: a change
--          is recorded in the campaign hash as `s:<key>` → `<delta>|<stock>|<available>`, so a
--          retry answers the first outcome instead of changing the stock again
-- The event's `at` is Redis's clock (TIME): a stock change decides nothing time-dependent.
-- Shard 0 of a sharded campaign also keeps `total`, the whole campaign's stock: it changes
-- with the shard's, and is what the event and the answer report.
-- returns  {'adjusted', stock, available} | {'replay', stock, available} | {'key_reused'}
--        | {'insufficient', available} | {'not_found'}
local key = 's:' .. ARGV[2]
local c = redis.call('HMGET', KEYS[1], 'stock', 'available', key, 'total')
if not c[1] then return {'not_found'} end
if c[3] then
  local first, stock, available = string.match(c[3], '^([^|]*)|([^|]*)|([^|]*)$')
  if first ~= ARGV[1] then return {'key_reused'} end
  return {'replay', stock, available}
end
local delta = tonumber(ARGV[1])
local stock, available = tonumber(c[1]), tonumber(c[2])
if available + delta < 0 then return {'insufficient', available} end
local reported = stock + delta
if c[4] then
  reported = tonumber(c[4]) + delta
  redis.call('HSET', KEYS[1], 'total', reported)
  redis.call('HINCRBY', KEYS[1], 'xv', 1)
end
redis.call('HSET', KEYS[1], 'stock', stock + delta, 'available', available + delta,
  key, ARGV[1] .. '|' .. reported .. '|' .. (available + delta))
local t = redis.call('TIME')
emit_stock(KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000), reported)
return {'adjusted', reported, available + delta}
