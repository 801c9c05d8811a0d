-- Reads, atomically, whether the campaign is sold out and if so its idempotency records.
-- KEYS[1]  campaign hash   KEYS[2] idempotency hash
-- returns  {available} while units remain; {0, key, value, key, value, ...} when sold out;
--          {} if the campaign does not exist
local available = redis.call('HGET', KEYS[1], 'available')
if not available then return {} end
if tonumber(available) > 0 then return {tonumber(available)} end
local out = redis.call('HGETALL', KEYS[2])
table.insert(out, 1, 0)
return out
