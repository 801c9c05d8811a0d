-- Reads a campaign's events for a consumer of a group, with the campaign's load epoch, in one
-- atomic step: the epoch names the load the events were decided under, so the database can
-- refuse events of a load the engine has since lost (see `store::batch`).
-- KEYS[1]  campaign hash   KEYS[2] event stream
-- ARGV[1]  group   ARGV[2] consumer   ARGV[3] count
-- ARGV[4]  reclaim after (ms): entries another consumer took this long ago without
--          acknowledging are taken over first; 0: none taken over this time
-- returns  {epoch or false, taken-over entries, new entries, available units or false},
--          entries as XRANGE gives them
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {redis.call('HGET', KEYS[1], 'epoch'), {}, {}, false}
end
local claimed = {}
if tonumber(ARGV[4]) > 0 then
  claimed = redis.call('XAUTOCLAIM', KEYS[2], ARGV[1], ARGV[2], ARGV[4], '0-0', 'COUNT', ARGV[3])[2]
end
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], '>')
local entries = {}
if read then entries = read[1][2] end
local c = redis.call('HMGET', KEYS[1], 'epoch', 'available')
return {c[1], claimed, entries, c[2]}
