-- Ends a campaign now, unless it ended already: no attempt at or after `now` is accepted
-- (reserve.lua and the group scripts refuse `ended`); live holds end as they would have. A
-- campaign that had not started yet starts and ends at once. Idempotent.
-- KEYS[1]  campaign hash
-- ARGV[1]  now (ms)
-- returns  1, or 0 when there is no such campaign
local c = redis.call('HMGET', KEYS[1], 'kind', 'starts', 'ends')
if not c[1] then return 0 end
local now = tonumber(ARGV[1])
if c[3] == '' or tonumber(c[3]) > now then redis.call('HSET', KEYS[1], 'ends', now) end
if c[2] ~= '' and tonumber(c[2]) > now then redis.call('HSET', KEYS[1], 'starts', now) end
return 1
