-- Files a claimed campaign under its next due time (or drops it when nothing is due), unless
-- it became active since (its retirement will file it) or the claim ran out.
-- KEYS[1]  the active list   KEYS[2] the due list
-- ARGV[1]  campaign   ARGV[2] claimed until (ms)   ARGV[3] now (ms)   ARGV[4] next due or ''
-- returns  1 if filed, 0 if left as it was
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local claimed = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not claimed or tonumber(claimed) ~= tonumber(ARGV[2]) then return 0 end
if tonumber(ARGV[3]) >= tonumber(ARGV[2]) then return 0 end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
end
return 1
