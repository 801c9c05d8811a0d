-- Shared by the scripts that end a reservation: gives a held or confirmed reservation's
-- units back. Prepended to confirm.lua, cancel.lua and expire.lua at load time.
-- campaign: campaign hash key; users: users hash key; exp: expiry sorted set key
-- rk: the reservation's hash key; id: its id; r: {status, qty, user}; to: the new status
local function release(campaign, users, exp, rk, id, r, to)
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
end
