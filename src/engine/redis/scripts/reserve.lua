-- Decides a batch of reservation attempts on one campaign, one after another in the order
-- given, each with exactly the rules of a lone attempt (a batch of one is a lone attempt).
-- Order of checks per attempt: campaign exists, idempotency key seen, rate, kind, window,
-- stock, per-user limit (see src/engine/mod.rs for why). Attempts that arrive while a call
-- for the campaign is in flight are sent together (src/engine/redis/batcher.rs), so under
-- load the campaign is read once and written once per batch, not per attempt.
-- KEYS[1]  campaign hash (config, counters, `u:<user>` counts, `k:<key>` idempotency records)
-- KEYS[2]  expiry list     KEYS[3] event stream
-- KEYS[4]  records list (every idempotency key in creation order, for the sold-out gate; the
--          record itself is the key's `k:` field)
-- KEYS[5]  reservations hash (lib.lua; declared, so a half-moved slot refuses the script
--          before it writes rather than failing at it after the campaign's writes)
-- ARGV[1]  attempts one user may make on this campaign per second, across every instance
--          (0: no limit); counted in `<campaign>:rl:<user>:<second>`, which expires
-- then six values per attempt: now (ms), user id, quantity, scoped idempotency key,
--          fingerprint of the request body, the new reservation's id (its record is a
--          field of `<campaign>:rs`, same hash tag: see lib.lua)
-- returns  one answer per attempt, in order:
--          {'reserved', created, expires, available}
--        | {'replay', id, user, quantity, created, expires}
--        | {'replay_gone', id}: the key's reservation ended and left Redis (retention)
--        | {'key_reused'} | {'rate_limited'} | {refusal code}
-- Redis calls per batch: one HMGET (config, counters, and every attempt's key record and
-- user count), then once for all the reservations made one HSET of the campaign, one of the
-- reservations hash, one RPUSH per list and one XADD (an entry carrying every event).
local rate = tonumber(ARGV[1])
local n = (#ARGV - 1) / 6
local fields = {'kind', 'starts', 'ends', 'limit', 'hold', 'available', 'held', 'records'}
for i = 0, n - 1 do
  fields[9 + 2 * i] = 'k:' .. ARGV[5 + 6 * i]
  fields[10 + 2 * i] = 'u:' .. ARGV[3 + 6 * i]
end
local c = redis.call('HMGET', KEYS[1], unpack(fields))
local answers = {}
if not c[1] then
  for i = 1, n do answers[i] = {'campaign_not_found'} end
  return answers
end

local available, held, records = tonumber(c[6]), tonumber(c[7]), tonumber(c[8])
-- What this batch has written so far, read before the hash (which still holds the state
-- from before the batch): records by key, counts by user.
local made, counts = {}, {}
local writes, exp, recs, events, rs = {}, {}, {}, {}, {}

for i = 0, n - 1 do
  local now, user, quantity = tonumber(ARGV[2 + 6 * i]), ARGV[3 + 6 * i], tonumber(ARGV[4 + 6 * i])
  local key, fp, id = ARGV[5 + 6 * i], ARGV[6 + 6 * i], ARGV[7 + 6 * i]
  local answer
  local mine = made[key]
  local seen = c[9 + 2 * i]
  if mine then
    if mine[2] ~= fp then answer = {'key_reused'}
    else answer = {'replay', mine[1], mine[3], mine[4], mine[5], mine[6]} end
  elseif seen then
    local bar = string.find(seen, '|', 1, true)
    local rid = string.sub(seen, 1, bar - 1)
    if string.sub(seen, bar + 1) ~= fp then answer = {'key_reused'}
    else
      local r = get_reservation(KEYS[1], rid)
      if not r then answer = {'replay_gone', rid}
      else
        answer = {'replay', rid, r.user, tostring(r.qty), string.format('%d', r.created),
          string.format('%d', r.expires)}
      end
    end
  end
  if not answer and rate > 0 then
    local counter = KEYS[1] .. ':rl:' .. user .. ':' .. math.floor(now / 1000)
    local attempts = redis.call('INCR', counter)
    if attempts == 1 then redis.call('PEXPIRE', counter, 2000) end
    if attempts > rate then answer = {'rate_limited'} end
  end
  if not answer then
    local had = counts[user] or tonumber(c[10 + 2 * i] or '0')
    if c[1] ~= 'flash_sale' then answer = {'wrong_campaign_kind'}
    elseif c[2] ~= '' and now < tonumber(c[2]) then answer = {'not_started'}
    elseif c[3] ~= '' and now >= tonumber(c[3]) then answer = {'ended'}
    elseif available < quantity then answer = {'sold_out'}
    elseif had + quantity > tonumber(c[4]) then answer = {'limit_exceeded'}
    else
      local expires = now + tonumber(c[5]) * 1000
      available, held, records = available - quantity, held + quantity, records + 1
      counts[user] = had + quantity
      made[key] = {id, fp, user, quantity, now, expires}
      local w = #writes
      writes[w + 1], writes[w + 2] = fields[9 + 2 * i], id .. '|' .. fp
      writes[w + 3], writes[w + 4] = fields[10 + 2 * i], had + quantity
      rs[#rs + 1], rs[#rs + 2] = id, pack_reservation('held', user, quantity, now, expires, '')
      exp[#exp + 1] = id
      recs[#recs + 1] = key
      push_reservation_event(events, now, id, user, quantity, 'held', now, expires, '', key, fp)
      answer = {'reserved', now, expires, available}
    end
  end
  answers[i + 1] = answer
end

if #exp > 0 then
  redis.call('HSET', KEYS[1], 'available', available, 'held', held, 'records', records,
    unpack(writes))
  redis.call('HSET', KEYS[5], unpack(rs))
  redis.call('RPUSH', KEYS[2], unpack(exp))
  redis.call('RPUSH', KEYS[4], unpack(recs))
  redis.call('XADD', KEYS[3], '*', 'e', table.concat(events))
end
return answers
