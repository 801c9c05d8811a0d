-- Shared by the scripts that change a reservation; prepended to confirm.lua, cancel.lua and
-- expire.lua at load time.

-- Appends the reservation's current state to the campaign's event stream (same slot), so the
-- change and its event are one atomic step.
-- stream: the stream key; rk: the reservation's hash key; id: its id; now: ms
local function emit(stream, rk, id, now)
  local r = redis.call('HMGET', rk, 'user', 'qty', 'status', 'created', 'expires', 'group')
  redis.call('XADD', stream, '*', 'type', 'reservation.' .. r[3], 'at', now, 'id', id,
    'user', r[1], 'qty', r[2], 'status', r[3], 'created', r[4], 'expires', r[5], 'group', r[6] or '')
end

-- Gives a held or confirmed reservation's units back and records its new status.
-- campaign, users, exp, stream: the campaign's keys; rk: the reservation's hash key; id: its
-- id; r: {status, qty, user}; to: the new status; now: ms
local function release(campaign, users, exp, stream, rk, id, r, to, now)
  local quantity = tonumber(r[2])
  if r[1] == 'held' then
    redis.call('HINCRBY', campaign, 'held', -quantity)
    redis.call('ZREM', exp, id)
  else
    redis.call('HINCRBY', campaign, 'confirmed', -quantity)
  end
  redis.call('HINCRBY', campaign, 'available', quantity)
  if redis.call('HINCRBY', users, r[3], -quantity) <= 0 then
    redis.call('HDEL', users, r[3])
  end
  redis.call('HSET', rk, 'status', to)
  emit(stream, rk, id, now)
end
