-- Gives a shard the units of a transfer, once: a transfer id seen before changes nothing (a
-- retry, or recovery completing a transfer whose sender died after giving).
-- KEYS[1]  receiving shard hash   KEYS[2] its set of received transfer ids
-- ARGV[1]  transfer id   ARGV[2] units
-- returns  1 given now, 0 given before, -1 the shard is missing
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local units = tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[1], 'stock', units)
redis.call('HINCRBY', KEYS[1], 'available', units)
redis.call('HINCRBY', KEYS[1], 'xv', 1)
return 1
