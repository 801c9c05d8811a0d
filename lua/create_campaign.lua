-- Creates a campaign unless one with the same id exists.
-- KEYS[1]  campaign hash   KEYS[2] event stream (its consumer group `persister` is made here)
-- ARGV     field, value, field, value, ... (config; counters are set from `stock`)
-- returns  1 if created, 0 if it existed (nothing changed)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local stock
for i = 1, #ARGV, 2 do
  if ARGV[i] == 'stock' then stock = ARGV[i + 1] end
end
redis.call('HSET', KEYS[1], 'available', stock, 'held', 0, 'confirmed', 0,
  'records', 0, 'gopen', 0, 'gformed', 0, 'gfailed', 0, unpack(ARGV))
redis.call('XGROUP', 'CREATE', KEYS[2], 'persister', '0', 'MKSTREAM')
return 1
