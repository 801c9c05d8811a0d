-- What background work a campaign still has, read without changing anything: events its
-- stream still holds (not yet persisted and acknowledged), and when it next falls due for the
-- reaper — its first running hold, an extended hold, an open group's window, an ended
-- reservation's retention, an open transfer (completed once it is a second old).
-- KEYS[1]  campaign hash   KEYS[2] expiry list   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)   ARGV[2] retention (ms)
-- (`:xout` records are `<to shard>|<units>|<at ms>`)
-- returns  {exists (0/1), stream entries, next due (ms) or -1}
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, redis.call('XLEN', KEYS[3]), -1} end
local now = tonumber(ARGV[1])
local due = nil
local function at(ms)
  ms = tonumber(ms)
  if ms and (not due or ms < due) then due = ms end
end
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0') * 1000
-- The list's head is walked by the reaper; ids no longer held may lead it. The first running
-- hold is due at its creation's end (an extension moves it to the extended set when met).
local ids = redis.call('LRANGE', KEYS[2], 0, 99)
for _, id in ipairs(ids) do
  local r = get_reservation(KEYS[1], id)
  if r and r.status == 'held' then
    at(math.min(r.expires, r.created + hold))
    break
  end
end
if not due and #ids == 100 then at(now) end
local x = redis.call('ZRANGE', KEYS[1] .. ':xexp', 0, 0, 'WITHSCORES')
if x[2] then at(x[2]) end
local g = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if g[2] then at(g[2]) end
local e = redis.call('LINDEX', KEYS[1] .. ':ended', 0)
if e then
  local bar = string.find(e, '|', 1, true)
  at(tonumber(string.sub(e, 1, bar - 1)) + tonumber(ARGV[2]))
end
for _, record in ipairs(redis.call('HVALS', KEYS[1] .. ':xout')) do
  local since = string.match(record, '|(%d+)$')
  if since then at(tonumber(since) + 1000) end
end
return {1, redis.call('XLEN', KEYS[3]), due or -1}
