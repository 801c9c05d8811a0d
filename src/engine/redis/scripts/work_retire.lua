-- Takes a campaign off the active list once nothing is left for the persister and nobody
-- announced a change since its lease was read, and files it under its next due time (a hold,
-- a group window, an ended reservation's retention, an open transfer) for the reaper.
-- KEYS[1]  the active list   KEYS[2] the due list (sorted set: campaign -> due, ms)
-- ARGV[1]  campaign   ARGV[2] its lease end as read   ARGV[3] next due (ms) or ''
-- returns  1 if retired, 0 if the lease was renewed or has not ended
local lease = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not lease or tonumber(lease) ~= tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(lease) > now then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], 'LT', ARGV[3], ARGV[1]) end
return 1
