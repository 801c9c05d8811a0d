-- The waiting room of a campaign (twin: src/engine/memory/queue.rs). One script, three
-- operations, so they share the one reading of a ticket's status.
-- KEYS[1]  campaign hash; the room's keys are `KEYS[1] .. ':q…'` (same hash tag):
--          :qt hash ticket -> user   :qu hash user -> ticket   :qk hash scoped key of the
--              join that made a ticket -> user (one per ticket: later joins answer the
--              user's ticket whatever their key and leave nothing behind)
--          :qw sorted set of waiting tickets, scored by lot (taken before the start, below
--              2^52) or 2^52 + arrival number (after)
--          :qa hash admitted ticket -> pass expiry (ms)
--          :qo sorted set of admitted passes not used yet, scored by expiry
--          :q  hash `seq` (arrivals after the start), `clock` (admission budget spent up to
--              this ms), `admitted` (in all), `gen` (the line's generation: the first
--              ticket id, so a line rebuilt after Redis lost it is told apart)
-- ARGV[1]  operation, ARGV[2] now (ms), then:
--   claim   ARGV[3] ticket id, ARGV[4] its pass's expiry (ms), ARGV[5] units asked,
--           ARGV[6] the decision's scoped idempotency key, ARGV[7] 'k' (a reservation's) or
--           'g' (a group's) -> 'replay' (the key was used: a retry takes nothing new),
--           'unknown' (the campaign is not here: the decision rebuilds it; the pass, signed,
--           is taken at its word),
--           'kept' (an unused pass: a unit was kept for it), 'owed' (used before: a unit
--              no unused pass is owed is kept for it now, until its ZREM from :qo) or
--              'refused' (no such unit: what its holder gave back went to the line)
--   tickets ARGV[3..] ticket ids                   -> {status (below) or {}, ...}
--   joins   ARGV[3..] 5 per join, in arrival order: now, user, scoped key, new ticket id, lot
--           -> per join {'joined' | 'existing', ticket id, status...} | {'key_reused'} |
--              {'campaign_not_found'} | {'ended'} | {'no_waiting_room'}
--   admit   -> {admitted now, still waiting, units left for the waiting (0 outside the window)}
--   line    -> {available, admitted, generation} or {} for an unknown campaign
-- status: {kind, user, detail, admitted, generation} with kind 'admitted' (detail: the pass
--         expiry), 'expired', 'sold_out' or 'waiting' (detail: the position, '' before the
--         draw); `admitted` and `generation` are the line's (see LinePoint in Rust)
local c = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])
-- The room's key names, made once per call (a concatenation per command costs more than
-- the command in a batch of joins).
local QT, QU, QK, QW, QA, QO, Q =
  c .. ':qt', c .. ':qu', c .. ':qk', c .. ':qw', c .. ':qa', c .. ':qo', c .. ':q'

-- The campaign's window and units and the line's point, read once per call however many
-- tickets it reads (joins change neither).
local window, point
local function answer(kind, user, detail)
  point = point or redis.call('HMGET', Q, 'admitted', 'gen')
  return {kind, user, detail or '', point[1] or '0', point[2] or ''}
end

-- The status of a ticket known not to be admitted.
local function unadmitted(ticket, user)
  window = window or redis.call('HMGET', c, 'starts', 'ends', 'available')
  local f = window
  if f[2] and f[2] ~= '' and now >= tonumber(f[2]) then return answer('expired', user) end
  if tonumber(f[3] or '0') == 0 then return answer('sold_out', user) end
  if f[1] and f[1] ~= '' and now < tonumber(f[1]) then return answer('waiting', user) end
  local rank = redis.call('ZRANK', QW, ticket)
  if not rank then return answer('expired', user) end
  return answer('waiting', user, tostring(rank + 1))
end

local function status(ticket)
  local user = redis.call('HGET', QT, ticket)
  if not user then return {} end
  local until_ms = redis.call('HGET', QA, ticket)
  if until_ms then
    if tonumber(until_ms) > now then return answer('admitted', user, until_ms) end
    return answer('expired', user)
  end
  return unadmitted(ticket, user)
end

local function with_ticket(outcome, ticket)
  local answered = {outcome, ticket}
  for _, v in ipairs(status(ticket)) do answered[#answered + 1] = v end
  return answered
end

if op == 'tickets' then
  local answers = {}
  for i = 3, #ARGV do answers[#answers + 1] = status(ARGV[i]) end
  return answers
end

if op == 'claim' then
  local ticket, expires, quantity = ARGV[3], ARGV[4], tonumber(ARGV[5])
  local seen
  if ARGV[7] == 'g' then
    seen = redis.call('HEXISTS', c .. ':gidem', ARGV[6])
  else
    seen = redis.call('HEXISTS', c, 'k:' .. ARGV[6])
  end
  if seen == 1 then return 'replay' end
  local available = redis.call('HGET', c, 'available')
  if not available then return 'unknown' end
  if redis.call('ZSCORE', QO, ticket) then return 'kept' end
  redis.call('ZREMRANGEBYSCORE', QO, '-inf', now)
  available = tonumber(available)
  if available - redis.call('ZCARD', QO) < quantity then return 'refused' end
  redis.call('ZADD', QO, expires, ticket)
  return 'owed'
end

if op == 'line' then
  local available = redis.call('HGET', c, 'available')
  if not available then return {} end
  local q = redis.call('HMGET', Q, 'admitted', 'gen')
  return {available, q[1] or '0', q[2] or ''}
end

local f = redis.call('HMGET', c, 'starts', 'ends', 'qrate', 'qpass', 'available')
if not f[5] then
  if op == 'admit' then return {0, 0} end
  local answers = {}
  for _ = 3, #ARGV, 5 do answers[#answers + 1] = {'campaign_not_found'} end
  return answers
end
local starts = tonumber(f[1] ~= '' and f[1] or nil)
local ends = tonumber(f[2] ~= '' and f[2] or nil)
local rate = tonumber(f[3] ~= '' and f[3] or nil)

-- A join makes at most seven calls: the key read, the user claimed with one HSETNX (read
-- back only when taken), the key recorded, the ticket, its score, the line's generation
-- (first join of a call), its place.
local generation_checked = false
local function join(user, key, fresh, lot)
  if not rate then return {'no_waiting_room'} end
  if ends and now >= ends then return {'ended'} end
  local owner = redis.call('HGET', QK, key)
  if owner and owner ~= user then return {'key_reused'} end
  if redis.call('HSETNX', QU, user, fresh) == 0 then
    return with_ticket('existing', redis.call('HGET', QU, user))
  end
  redis.call('HSET', QK, key, user)
  redis.call('HSET', QT, fresh, user)
  if not generation_checked then
    generation_checked = true
    if redis.call('HSETNX', Q, 'gen', fresh) == 1 then point = nil end
  end
  local score = lot
  if not (starts and now < starts) then
    score = 4503599627370496 + redis.call('HINCRBY', Q, 'seq', 1)
  end
  redis.call('ZADD', QW, score, fresh)
  local answered = {'joined', fresh}
  for _, v in ipairs(unadmitted(fresh, user)) do answered[#answered + 1] = v end
  return answered
end

if op == 'joins' then
  local answers = {}
  for i = 3, #ARGV, 5 do
    now = tonumber(ARGV[i])
    answers[#answers + 1] = join(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  end
  return answers
end

-- admit
local waiting = redis.call('ZCARD', QW)
if not rate or (starts and now < starts) or (ends and now >= ends) then
  return {0, waiting, 0}
end
redis.call('ZREMRANGEBYSCORE', QO, '-inf', now)
local room = tonumber(f[5]) - redis.call('ZCARD', QO)
local burst = math.max(1, math.floor(rate / 10))
local clock = tonumber(redis.call('HGET', Q, 'clock') or '0')
clock = math.max(clock, now - burst * 1000 / rate)
local budget = math.floor((now - clock) * rate / 1000)
local n = math.min(budget, room, waiting)
if n <= 0 then return {0, waiting, math.max(0, room)} end
local expires = string.format('%.0f', now + tonumber(f[4]) * 1000)
-- In pages, so `unpack` stays far below Lua's stack limit however high the rate.
local left = n
while left > 0 do
  local popped = redis.call('ZPOPMIN', QW, math.min(left, 1000))
  local passes, lapses = {}, {}
  for i = 1, #popped, 2 do
    passes[#passes + 1] = popped[i]
    passes[#passes + 1] = expires
    lapses[#lapses + 1] = expires
    lapses[#lapses + 1] = popped[i]
  end
  redis.call('HSET', QA, unpack(passes))
  redis.call('ZADD', QO, unpack(lapses))
  left = left - #popped / 2
end
redis.call('HSET', Q, 'clock', string.format('%.3f', clock + n * 1000 / rate))
redis.call('HINCRBY', Q, 'admitted', n)
return {n, waiting - n, math.max(0, room - n)}
