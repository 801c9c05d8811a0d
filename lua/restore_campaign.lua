-- Recreates a campaign the engine lost (Redis restarted empty) from the database: its config,
-- its live (held and confirmed) reservations, their idempotency records and expiries, and the
-- counters that follow from them. Does nothing if the campaign exists.
-- KEYS[1]  campaign hash   KEYS[2] users hash   KEYS[3] idempotency hash
-- KEYS[4]  expiry sorted set   KEYS[5] event stream
-- ARGV[1]  n: how many config arguments follow (field, value, ...; `stock` among them)
-- ARGV[2..n+1]  config;  then 9 per reservation:
--          id, user, qty, status, created, expires, group, idempotency key, fingerprint
-- returns  1 if restored, 0 if the campaign existed
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local n = tonumber(ARGV[1])
local stock = 0
for i = 2, n + 1, 2 do
  if ARGV[i] == 'stock' then stock = tonumber(ARGV[i + 1]) end
end
local held, confirmed = 0, 0
for i = n + 2, #ARGV, 9 do
  local id, user, qty, status = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  redis.call('HSET', KEYS[1] .. ':r:' .. id, 'user', user, 'qty', qty, 'status', status,
    'created', ARGV[i + 4], 'expires', ARGV[i + 5], 'group', ARGV[i + 6])
  redis.call('HINCRBY', KEYS[2], user, qty)
  if ARGV[i + 7] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[i + 7], id .. '|' .. ARGV[i + 8])
  end
  if status == 'held' then
    held = held + qty
    redis.call('ZADD', KEYS[4], ARGV[i + 5], id)
  else
    confirmed = confirmed + qty
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2, n + 1))
redis.call('HSET', KEYS[1], 'available', stock - held - confirmed, 'held', held, 'confirmed', confirmed)
-- pcall: the stream and its group may have survived; BUSYGROUP is fine then.
redis.pcall('XGROUP', 'CREATE', KEYS[5], 'persister', '0', 'MKSTREAM')
return 1
