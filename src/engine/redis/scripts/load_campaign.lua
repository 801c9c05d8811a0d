-- Loads a campaign: a new one (no reservations, no groups), or one the engine lost (Redis
-- restarted empty) rebuilt from the database: its config, its groups, its reservations (live
-- ones with their expiries, ended ones with their final status), their idempotency records,
-- and the counters that follow from the live ones. Makes the event stream and its consumer groups. Does nothing if the
-- campaign exists.
-- KEYS[1]  campaign hash   KEYS[2] expiry list   KEYS[3] event stream
-- KEYS[4]  group idempotency hash   KEYS[5] group expiry sorted set
-- KEYS[6]  records list (reservation idempotency keys in creation order)
-- ARGV[1]  n: how many config arguments follow the consumer groups (field, value, ...;
--          `stock` among them)
-- ARGV[2]  m: how many reservations follow the config
-- ARGV[3]  k: how many consumer group names follow (ARGV[4..k+3])
-- then the config;  then 9 per reservation, in creation order:
--          id, user, qty, status, created, expires, group, idempotency key, fingerprint
--          then 6 per group: id, leader, size, status, created, expires
-- returns  1 if loaded, 0 if the campaign existed
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local n, m, k = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local first_config = k + 4
local stock = 0
for i = first_config, first_config + n - 1, 2 do
  if ARGV[i] == 'stock' then stock = tonumber(ARGV[i + 1]) end
end
local held, confirmed, records = 0, 0, 0
local holds = {}
local first_reservation = first_config + n
local first_group = first_reservation + 9 * m
local sizes = {}
local counts = {open = 0, formed = 0, failed = 0}
for i = first_group, #ARGV, 6 do
  local gid, size, status = ARGV[i], tonumber(ARGV[i + 2]), ARGV[i + 3]
  redis.call('HSET', KEYS[1] .. ':g:' .. gid, 'leader', ARGV[i + 1], 'size', size, 'status', status,
    'created', ARGV[i + 4], 'expires', ARGV[i + 5], 'active', 0, 'confirmed', 0)
  counts[status] = counts[status] + 1
  sizes[gid] = size
  if status == 'open' then
    held = held + size
    redis.call('ZADD', KEYS[5], ARGV[i + 5], gid)
  elseif status == 'formed' then
    confirmed = confirmed + size
  end
end
for i = first_reservation, first_group - 1, 9 do
  local id, user, qty, status, group = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 6]
  -- Ended reservations come back too (status, idempotency record), so a replay of their key
  -- and a read of their id answer as before; only live ones take units.
  local live = status == 'held' or status == 'confirmed'
  redis.call('HSET', KEYS[1] .. ':rs', id,
    pack_reservation(status, user, qty, ARGV[i + 4], ARGV[i + 5], group))
  if live then redis.call('HINCRBY', KEYS[1], 'u:' .. user, qty) end
  if status == 'held' then holds[#holds + 1] = {tonumber(ARGV[i + 5]), id} end
  if group ~= '' then
    local gk = KEYS[1] .. ':g:' .. group
    if live then redis.call('HINCRBY', gk, 'active', 1) end
    redis.call('RPUSH', gk .. ':m', id)
    redis.call('HSET', gk .. ':mu', user, id)
    if ARGV[i + 7] ~= '' then redis.call('HSET', KEYS[4], ARGV[i + 7], group .. '|' .. ARGV[i + 8]) end
    if status == 'confirmed' and redis.call('HGET', gk, 'status') == 'open' then
      redis.call('HINCRBY', gk, 'confirmed', 1)
      held = held - qty
      confirmed = confirmed + qty
    elseif status == 'confirmed' then
      redis.call('HINCRBY', gk, 'confirmed', 1)
    end
  else
    if ARGV[i + 7] ~= '' then
      redis.call('HSET', KEYS[1], 'k:' .. ARGV[i + 7], id .. '|' .. ARGV[i + 8])
      redis.call('RPUSH', KEYS[6], ARGV[i + 7])
      records = records + 1
    end
    if status == 'held' then held = held + qty elseif status == 'confirmed' then confirmed = confirmed + qty end
    -- Ended ones leave again after the retention, counted from their expiry (their end time
    -- is not kept; it was no later).
    if not live then redis.call('RPUSH', KEYS[1] .. ':ended', ARGV[i + 5] .. '|' .. id) end
  end
end
-- The expiry list is in expiry order (see expire.lua).
table.sort(holds, function(a, b) return a[1] < b[1] end)
for _, hold in ipairs(holds) do redis.call('RPUSH', KEYS[2], hold[2]) end
redis.call('HSET', KEYS[1], unpack(ARGV, first_config, first_reservation - 1))
redis.call('HSET', KEYS[1], 'available', stock - held - confirmed, 'held', held, 'confirmed', confirmed,
  'records', records, 'gopen', counts.open, 'gformed', counts.formed, 'gfailed', counts.failed)
-- pcall: the stream and its groups may have survived; BUSYGROUP is fine then.
for i = 4, k + 3 do
  redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[i], '0', 'MKSTREAM')
end
return 1
