-- The waiting room of a campaign (twin: src/engine/memory/queue.rs). One script, several
-- operations, so they share the one reading of a ticket's status.
--
-- Tickets are numbered in the line (1, 2, …): the public ticket id is the line's generation
-- (18 characters of a ULID) followed by the number (see `TicketId::numbered`), so nothing
-- here stores an id. A ticket costs one field in each of three hashes — number → user (in
-- buckets of 100, which stay small encodings), user → number, the key of the join that made
-- it → number — and nothing for its place: tickets taken after the start wait in number
-- order; those taken before it are drawn at the start by a secret permutation of their
-- numbers (a keyed Feistel network, `place`), so the draw stores nothing either.
-- KEYS[1]  campaign hash; the room's keys are `KEYS[1] .. ':w…'` (same hash tag):
--          :wt:<n div 100> hash number -> user
--          :wu hash user -> number   :wk hash scoped key of the join that made a ticket ->
--              number (later joins answer the user's ticket whatever their key and leave
--              nothing behind)
--          :wa hash admitted number -> pass expiry (ms)
--          :wo sorted set of admitted passes (numbers) not used yet, scored by expiry
--          :w  hash `n` (tickets so far), `n0` (tickets taken before the start: fixed by the
--              first step at or after it), `pre` (the next drawn place to admit), `head` (the
--              next later number to admit), `seed` (the draw's secret), `clock` (admission
--              budget spent up to this ms), `admitted` (in all), `gen` (the line's
--              generation, so a line rebuilt after Redis lost it is told apart)
-- ARGV[1]  operation, ARGV[2] now (ms), then:
--   tickets ARGV[3..] generation, number, generation, number, …
--           -> {status (below) or {}, ...}
--   joins   ARGV[3] a generation and ARGV[4] a secret for a new line, then 3 per join, in
--           arrival order: now, user, scoped key
--           -> per join {'joined' | 'existing', number, status...} | {'key_reused'} |
--              {'campaign_not_found'} | {'ended'} | {'no_waiting_room'}
--   admit   -> {admitted now, still waiting, units left for the waiting (0 outside the window)}
--   line    -> {available, admitted, generation} or {} for an unknown campaign
--   claim   ARGV[3] generation, ARGV[4] number, ARGV[5] its pass's expiry (ms), ARGV[6]
--           units asked, ARGV[7] the decision's scoped idempotency key, ARGV[8] 'k' (a
--           reservation's) or 'g' (a group's) -> 'replay' (the key was used: a retry takes
--           nothing new), 'unknown' (the campaign or the line is not here: the decision
--           rebuilds it; the pass, signed, is taken at its word), 'kept' (an unused pass: a
--           unit was kept for it), 'owed' (used before: a unit no unused pass is owed is
--           kept for it now, until 'used') or 'refused' (no such unit: what its holder gave
--           back went to the line)
--   used    ARGV[3] generation, ARGV[4] number -> 1 (the pass needs no unit kept any more)
-- status: {kind, user, detail, admitted, generation} with kind 'admitted' (detail: the pass
--         expiry), 'expired', 'sold_out' or 'waiting' (detail: the position, '' before the
--         draw); `admitted` and `generation` are the line's (see LinePoint in Rust)
local c = KEYS[1]
local op, now = ARGV[1], tonumber(ARGV[2])
-- The room's key names, made once per call (a concatenation per command costs more than
-- the command in a batch of joins).
local WT, WU, WK, WA, WO, W =
  c .. ':wt:', c .. ':wu', c .. ':wk', c .. ':wa', c .. ':wo', c .. ':w'

local function bucket(n)
  return WT .. math.floor(n / 100)
end

local function number(v)
  return tonumber(v ~= '' and v or nil)
end

-- The campaign's window, rate, pass length and units, read once per call.
local f
local function fields()
  f = f or redis.call('HMGET', c, 'starts', 'ends', 'qrate', 'qpass', 'available')
  return f
end

-- The line's numbering, read once per call; `n0` is fixed (written) by the first step at or
-- after the start, so every ticket numbered later waits behind the drawn ones.
local line
local function numbering()
  if not line then
    local q = redis.call('HMGET', W, 'n0', 'pre', 'head', 'n', 'seed')
    line = {n0 = tonumber(q[1] or nil), pre = tonumber(q[2] or '1'), head = tonumber(q[3] or nil),
            n = tonumber(q[4] or '0'), seed = q[5] or ''}
  end
  if not line.n0 then
    local starts = number(fields()[1] or '')
    if not (starts and now < starts) then
      line.n0 = line.n
      redis.call('HSET', W, 'n0', line.n0)
    end
  end
  if line.n0 and not line.head then line.head = line.n0 + 1 end
  return line
end

-- The draw: a keyed bijection of [0, size) — a 4-round Feistel network over the smallest
-- even number of bits that covers `size`, walked until it lands inside — and its inverse.
local function place(x, size, seed, inverse)
  local bits = 2
  while 2 ^ bits < size do bits = bits + 2 end
  local half = 2 ^ (bits / 2)
  local function mix(round, v)
    return tonumber(string.sub(redis.sha1hex(seed .. ':' .. round .. ':' .. v), 1, 8), 16) % half
  end
  repeat
    local l, r = math.floor(x / half), x % half
    if inverse then
      for i = 4, 1, -1 do l, r = bit.bxor(r, mix(i, l)), l end
    else
      for i = 1, 4 do l, r = r, bit.bxor(l, mix(i, r)) end
    end
    x = l * half + r
  until x < size
  return x
end

-- The line's point, read once per call.
local point
local function answer(kind, user, detail)
  point = point or redis.call('HMGET', W, 'admitted', 'gen')
  return {kind, user, detail or '', point[1] or '0', point[2] or ''}
end

-- The status of ticket `n` known not to be admitted.
local function unadmitted(n, user)
  local w = fields()
  local ends = number(w[2] or '')
  if ends and now >= ends then return answer('expired', user) end
  if tonumber(w[5] or '0') == 0 then return answer('sold_out', user) end
  local l = numbering()
  if not l.n0 then return answer('waiting', user) end
  local drawn_left = l.n0 - l.pre + 1
  if n <= l.n0 then
    local at = place(n - 1, l.n0, l.seed, false) + 1
    if at < l.pre then return answer('expired', user) end
    return answer('waiting', user, tostring(at - l.pre + 1))
  end
  if n < l.head then return answer('expired', user) end
  return answer('waiting', user, tostring(drawn_left + n - l.head + 1))
end

-- The line's generation, read once per call (a join that starts the line sets it first).
local current
local function generation()
  current = current or redis.call('HGET', W, 'gen')
  return current
end

-- The status of ticket `n` of generation `gen`: {} if the line has no such ticket.
local function status(gen, n)
  n = tonumber(n)
  if not n or generation() ~= gen then return {} end
  local user = redis.call('HGET', bucket(n), n)
  if not user then return {} end
  local until_ms = redis.call('HGET', WA, n)
  if until_ms then
    if tonumber(until_ms) > now then return answer('admitted', user, until_ms) end
    return answer('expired', user)
  end
  return unadmitted(n, user)
end

local function with_ticket(outcome, gen, n)
  local answered = {outcome, n}
  for _, v in ipairs(status(gen, n)) do answered[#answered + 1] = v end
  return answered
end

if op == 'tickets' then
  local answers = {}
  for i = 3, #ARGV, 2 do answers[#answers + 1] = status(ARGV[i], ARGV[i + 1]) end
  return answers
end

if op == 'line' then
  local available = redis.call('HGET', c, 'available')
  if not available then return {} end
  local q = redis.call('HMGET', W, 'admitted', 'gen')
  return {available, q[1] or '0', q[2] or ''}
end

if op == 'used' then
  if generation() == ARGV[3] then redis.call('ZREM', WO, ARGV[4]) end
  return 1
end

if op == 'claim' then
  local gen, n, expires, quantity = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
  local seen
  if ARGV[8] == 'g' then
    seen = redis.call('HEXISTS', c .. ':gidem', ARGV[7])
  else
    seen = redis.call('HEXISTS', c, 'k:' .. ARGV[7])
  end
  if seen == 1 then return 'replay' end
  local available = redis.call('HGET', c, 'available')
  if not available or generation() ~= gen then return 'unknown' end
  if redis.call('ZSCORE', WO, n) then return 'kept' end
  redis.call('ZREMRANGEBYSCORE', WO, '-inf', now)
  if tonumber(available) - redis.call('ZCARD', WO) < quantity then return 'refused' end
  redis.call('ZADD', WO, expires, n)
  return 'owed'
end

local w = fields()
if not w[5] then
  if op == 'admit' then return {0, 0} end
  local answers = {}
  for _ = 5, #ARGV, 3 do answers[#answers + 1] = {'campaign_not_found'} end
  return answers
end
local starts = number(w[1] or '')
local ends = number(w[2] or '')
local rate = number(w[3] or '')

-- A join makes at most seven calls: the key read (and its ticket's user when taken), the
-- user read, the number, the user, key and ticket recorded; the first join of a call also
-- reads the line (and starts one).
local gen
local function join(user, key)
  if not rate then return {'no_waiting_room'} end
  if ends and now >= ends then return {'ended'} end
  if not gen then
    if redis.call('HSETNX', W, 'gen', ARGV[3]) == 1 then
      redis.call('HSET', W, 'seed', ARGV[4])
      line, point, current = nil, nil, nil
    end
    gen = generation()
  end
  local owner = redis.call('HGET', WK, key)
  if owner and redis.call('HGET', bucket(tonumber(owner)), owner) ~= user then
    return {'key_reused'}
  end
  local had = redis.call('HGET', WU, user)
  if had then return with_ticket('existing', gen, had) end
  -- Fixes the drawn tickets first if this join is the first step at or after the start.
  local l = numbering()
  local n = redis.call('HINCRBY', W, 'n', 1)
  l.n = n
  redis.call('HSET', WU, user, n)
  redis.call('HSET', WK, key, n)
  redis.call('HSET', bucket(n), n, user)
  local answered = {'joined', n}
  for _, v in ipairs(unadmitted(n, user)) do answered[#answered + 1] = v end
  return answered
end

if op == 'joins' then
  local answers = {}
  for i = 5, #ARGV, 3 do
    now = tonumber(ARGV[i])
    answers[#answers + 1] = join(ARGV[i + 1], ARGV[i + 2])
  end
  return answers
end

-- admit
local l = numbering()
if not l.n0 then return {0, l.n, 0} end
local waiting = (l.n0 - l.pre + 1) + math.max(0, l.n - l.head + 1)
if not rate or (ends and now >= ends) then return {0, waiting, 0} end
redis.call('ZREMRANGEBYSCORE', WO, '-inf', now)
local room = tonumber(w[5]) - redis.call('ZCARD', WO)
local burst = math.max(1, math.floor(rate / 10))
local clock = tonumber(redis.call('HGET', W, 'clock') or '0')
clock = math.max(clock, now - burst * 1000 / rate)
local budget = math.floor((now - clock) * rate / 1000)
local count = math.min(budget, room, waiting)
if count <= 0 then return {0, waiting, math.max(0, room)} end
local expires = string.format('%.0f', now + tonumber(w[4]) * 1000)
-- In pages, so `unpack` stays far below Lua's stack limit however high the rate: the drawn
-- tickets first, in the draw's order, then the later ones in number order.
local left = count
local function admit_page(numbers)
  local passes, lapses = {}, {}
  for _, n in ipairs(numbers) do
    passes[#passes + 1] = n
    passes[#passes + 1] = expires
    lapses[#lapses + 1] = expires
    lapses[#lapses + 1] = n
  end
  redis.call('HSET', WA, unpack(passes))
  redis.call('ZADD', WO, unpack(lapses))
  left = left - #numbers
end
while left > 0 and l.pre <= l.n0 do
  local numbers = {}
  local last = math.min(l.n0, l.pre + math.min(left, 1000) - 1)
  for at = l.pre, last do numbers[#numbers + 1] = place(at - 1, l.n0, l.seed, true) + 1 end
  l.pre = last + 1
  admit_page(numbers)
end
while left > 0 do
  local numbers = {}
  for n = l.head, l.head + math.min(left, 1000) - 1 do numbers[#numbers + 1] = n end
  l.head = l.head + #numbers
  admit_page(numbers)
end
redis.call('HSET', W, 'pre', l.pre, 'head', l.head,
  'clock', string.format('%.3f', clock + count * 1000 / rate))
redis.call('HINCRBY', W, 'admitted', count)
return {count, waiting - count, math.max(0, room - count)}
