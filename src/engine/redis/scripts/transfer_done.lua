-- Closes a transfer on its donor once the receiver has its units.
-- KEYS[1]  donor shard hash   KEYS[2] its open transfers hash
-- ARGV[1]  transfer id
-- returns  1 closed now, 0 not open
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return 0 end
local units = tonumber(string.match(record, '^[^|]*|([^|]*)|'))
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'xout', -units)
redis.call('HINCRBY', KEYS[1], 'xv', 1)
return 1
