-- Reads, atomically, whether the campaign is sold out and if so its idempotency records
-- (the campaign hash's `k:<key>` fields).
-- KEYS[1]  campaign hash
-- returns  {available} while units remain; {0, key, value, key, value, ...} when sold out;
--          {} if the campaign does not exist
local available = redis.call('HGET', KEYS[1], 'available')
if not available then return {} end
if tonumber(available) > 0 then return {tonumber(available)} end
local all = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #all, 2 do
  local field = all[i]
  if string.byte(field, 1) == 107 and string.byte(field, 2) == 58 then -- 'k:'
    out[#out + 1] = string.sub(field, 3)
    out[#out + 1] = all[i + 1]
  end
end
return out
