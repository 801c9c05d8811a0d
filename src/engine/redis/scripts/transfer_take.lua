-- Takes units off a shard to move them to another shard of its campaign: its stock and its
-- available units go down, and an open transfer record (`<to>|<units>|<at ms>`) keeps them
-- counted until `transfer_done.lua` closes it, after the receiver got them.
-- KEYS[1]  donor shard hash   KEYS[2] its open transfers hash
-- ARGV[1]  transfer id   ARGV[2] receiving shard   ARGV[3] units wanted
-- ARGV[4]  units at least (fewer available: nothing is taken)   ARGV[5] now (ms)
-- returns  {'taken', units} | {'short', available} | {'not_found'}
local c = redis.call('HMGET', KEYS[1], 'available')
if not c[1] then return {'not_found'} end
local available, want, least = tonumber(c[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
if available < least or available == 0 then return {'short', available} end
local take = math.min(want, available)
redis.call('HINCRBY', KEYS[1], 'stock', -take)
redis.call('HINCRBY', KEYS[1], 'available', -take)
redis.call('HINCRBY', KEYS[1], 'xout', take)
redis.call('HINCRBY', KEYS[1], 'xv', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. '|' .. take .. '|' .. ARGV[5])
return {'taken', take}
