-- Reads, atomically, whether the campaign is sold out and if so the idempotency records it
-- made from position ARGV[1] on (the records list keeps them in creation order), so a node
-- that re-arms its sold-out gate reads only what is new since its last arming.
-- KEYS[1]  campaign hash   KEYS[2] records list: the scoped keys, whose records are the
--          hash's `k:<key>` fields (`<reservation id>|<fp>`); an entry of the earlier layout
--          carries its record itself (`<key><US><id>|<fp>`)
-- ARGV[1]  from: how many records the caller already has   ARGV[2] at most this many
-- returns  {} if the campaign does not exist; {available} while units remain;
--          {0, total, record, record, ...} when sold out: records from.., at most ARGV[2]
--          of them, each `<key><US><id>|<fp>` (a page: records never change once made,
--          so a caller may read the older pages in separate calls, as long as one call
--          returns the tail);
--          total < from: the list was rebuilt; the caller reads again from 0
local available = redis.call('HGET', KEYS[1], 'available')
if not available then return {} end
if tonumber(available) > 0 then return {tonumber(available)} end
local total = redis.call('LLEN', KEYS[2])
local out = {0, total}
if total > tonumber(ARGV[1]) then
  local last = tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1
  local listed = redis.call('LRANGE', KEYS[2], ARGV[1], last)
  local fields = {}
  for i, key in ipairs(listed) do fields[i] = 'k:' .. key end
  local values = #fields > 0 and redis.call('HMGET', KEYS[1], unpack(fields)) or {}
  local US = string.char(31)
  for i, key in ipairs(listed) do
    if string.find(key, US, 1, true) then out[#out + 1] = key
    elseif values[i] then out[#out + 1] = key .. US .. values[i] end
  end
end
return out
