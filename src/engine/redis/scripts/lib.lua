-- Shared by every script that changes state or reads a reservation; `src/engine/redis/scripts.rs`
-- folds it onto the first line of each at load time, so their line numbers stay their own (keep
-- comments here on lines of their own). Keys reached from `campaign .. ':rs'` or
-- `campaign .. ':g:' .. id` carry the campaign's hash tag.

-- Every event is a stream entry with one field, `e`: its values joined by the unit separator
-- (byte 31), which no id, user id, key or number can contain (user ids exclude control
-- characters). One field instead of eleven: less for XADD to store and for the persister to
-- parse. This file is the one Lua encoder; its Rust twin is `src/engine/redis/codec.rs`.
-- Layouts:
--   reservation.*   type at id user qty status created expires group [key fp]
--   group.*         type at gid leader size gstatus created expires
--   campaign.stock  type at stock
local US = string.char(31)

-- Between the events of one stream entry (byte 30): a batch of reserves (reserve.lua) is
-- one entry carrying one event per reservation made.
local RS = string.char(30)

-- Appends a reservation event's values, separators included, to `buf` (a table that
-- table.concat joins into one entry; events after the first are preceded by RS). A creating
-- event also carries the idempotency record (`key`, `fp`), so the database can rebuild it.
-- The type is `reservation.<status>`, or `reservation.<kind>` when given (`extended`).
local function push_reservation_event(buf, now, id, user, qty, status, created, expires, group,
    key, fp, kind)
  local n = #buf
  if n > 0 then buf[n + 1] = RS; n = n + 1 end
  buf[n + 1], buf[n + 2], buf[n + 3], buf[n + 4], buf[n + 5] =
    'reservation.', kind or status, US, now, US
  buf[n + 6], buf[n + 7], buf[n + 8], buf[n + 9], buf[n + 10] = id, US, user, US, qty
  buf[n + 11], buf[n + 12], buf[n + 13], buf[n + 14], buf[n + 15] = US, status, US, created, US
  buf[n + 16], buf[n + 17], buf[n + 18] = expires, US, group or ''
  if key then
    buf[n + 19], buf[n + 20], buf[n + 21], buf[n + 22] = US, key, US, fp
  end
end

-- Appends a reservation event with the given values to the campaign's event stream (same
-- slot), so the change and its event are one atomic step.
local function emit_values(stream, now, id, user, qty, status, created, expires, group, key, fp)
  local buf = {}
  push_reservation_event(buf, now, id, user, qty, status, created, expires, group, key, fp)
  redis.call('XADD', stream, '*', 'e', table.concat(buf))
end

-- A reservation is one field of its campaign's reservations hash (`<campaign>:rs`): its id,
-- then `status US user US qty US created US expires US group` (group '' outside groups).
-- One field instead of a hash key of its own: ~98 B less Redis memory per live hold
-- (docs/performance.md). Versions before this one kept each reservation as a
-- hash of its own (`<campaign>:r:<id>`, same hash tag): read where the field is missing,
-- moved into the field by its next write (`legacy` marks one read from there).
-- Returns {status, user, qty, created, expires, group[, legacy]} or nil.
local function get_reservation(campaign, id)
  local packed = redis.call('HGET', campaign .. ':rs', id)
  if packed then
    local status, user, qty, created, expires, group = string.match(packed,
      '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31(.*)$')
    return {status = status, user = user, qty = tonumber(qty), created = tonumber(created),
      expires = tonumber(expires), group = group}
  end
  local old = redis.call('HMGET', campaign .. ':r:' .. id, 'status', 'user', 'qty', 'created',
    'expires', 'group')
  if not old[1] then return nil end
  return {status = old[1], user = old[2], qty = tonumber(old[3]), created = tonumber(old[4]),
    expires = tonumber(old[5]), group = old[6] or '', legacy = true}
end

-- The packed value of a reservation (see get_reservation).
local function pack_reservation(status, user, qty, created, expires, group)
  return table.concat({status, user, qty, created, expires, group or ''}, US)
end

-- Writes a reservation read by get_reservation (and changed) back.
local function put_reservation(campaign, id, r)
  redis.call('HSET', campaign .. ':rs', id,
    pack_reservation(r.status, r.user, r.qty, r.created, r.expires, r.group))
  if r.legacy then
    redis.call('DEL', campaign .. ':r:' .. id)
    r.legacy = nil
  end
end

-- Removes a reservation (the retention ended).
local function drop_reservation(campaign, id)
  if redis.call('HDEL', campaign .. ':rs', id) == 0 then
    redis.call('DEL', campaign .. ':r:' .. id)
  end
end

-- Appends a reservation's state, as `r` (see get_reservation) holds it.
local function emit(stream, id, r, now, key, fp)
  emit_values(stream, now, id, r.user, r.qty, r.status, r.created, r.expires, r.group, key, fp)
end

-- What every script that changes a reservation answers: {outcome, user, qty, status,
-- created, expires, group}.
local function answer_reservation(outcome, r)
  return {outcome, r.user, tostring(r.qty), r.status, string.format('%d', r.created),
    string.format('%d', r.expires), r.group}
end

-- Appends the group's current state (without members) to the event stream.
local GROUP_EVENT = {open = 'group.opened', formed = 'group.formed', failed = 'group.failed'}
local function emit_group(stream, gk, gid, now)
  local g = redis.call('HMGET', gk, 'leader', 'size', 'status', 'created', 'expires')
  redis.call('XADD', stream, '*', 'e',
    table.concat({GROUP_EVENT[g[3]], now, gid, g[1], g[2], g[3], g[4], g[5]}, US))
end

-- Appends the campaign's new stock.
local function emit_stock(stream, now, stock)
  redis.call('XADD', stream, '*', 'e', table.concat({'campaign.stock', now, stock}, US))
end

-- Gives a held or confirmed reservation's units back and records its new status. Outside a
-- group the units return to the campaign; a group member's slot returns to its open group.
-- The hold's id stays in the expiry list; the reaper skips ids that are no longer held.
-- campaign, stream: the campaign's keys; id: the reservation's id; r: as get_reservation
-- read it (its status becomes `to`); now: ms
local function release(campaign, stream, id, r, to, now)
  local quantity = r.qty
  if r.group ~= '' then
    local gk = campaign .. ':g:' .. r.group
    redis.call('HINCRBY', gk, 'active', -1)
    if r.status == 'confirmed' then
      redis.call('HINCRBY', gk, 'confirmed', -1)
      redis.call('HINCRBY', campaign, 'confirmed', -quantity)
      redis.call('HINCRBY', campaign, 'held', quantity)
    end
  else
    redis.call('HINCRBY', campaign, r.status, -quantity)
    redis.call('HINCRBY', campaign, 'available', quantity)
  end
  if redis.call('HINCRBY', campaign, 'u:' .. r.user, -quantity) <= 0 then
    redis.call('HDEL', campaign, 'u:' .. r.user)
  end
  r.status = to
  put_reservation(campaign, id, r)
  emit(stream, id, r, now)
  -- Outside groups, an ended reservation leaves Redis after the retention (expire.lua);
  -- the database keeps it. Ends are appended in time order.
  if r.group == '' then
    redis.call('RPUSH', campaign .. ':ended', now .. '|' .. id)
  end
end

-- Fails the group if it is open past its window: every member with a slot is released and
-- the whole quota returns to the campaign. Returns how many members were released.
local function fail_group_if_due(campaign, gexp, stream, gid, now)
  local gk = campaign .. ':g:' .. gid
  local g = redis.call('HMGET', gk, 'status', 'expires', 'size', 'confirmed')
  if g[1] ~= 'open' or tonumber(now) < tonumber(g[2]) then return 0 end
  local size, confirmed = tonumber(g[3]), tonumber(g[4])
  redis.call('HSET', gk, 'status', 'failed', 'active', 0, 'confirmed', 0)
  redis.call('ZREM', gexp, gid)
  redis.call('HINCRBY', campaign, 'available', size)
  redis.call('HINCRBY', campaign, 'held', confirmed - size)
  -- `0 - x`, not `-x`: Lua's -0 reaches Redis as "-0", which HINCRBY rejects.
  redis.call('HINCRBY', campaign, 'confirmed', 0 - confirmed)
  redis.call('HINCRBY', campaign, 'gopen', -1)
  redis.call('HINCRBY', campaign, 'gfailed', 1)
  local released = 0
  for _, rid in ipairs(redis.call('LRANGE', gk .. ':m', 0, -1)) do
    local r = get_reservation(campaign, rid)
    if r and (r.status == 'held' or r.status == 'confirmed') then
      r.status = 'released'
      put_reservation(campaign, rid, r)
      if redis.call('HINCRBY', campaign, 'u:' .. r.user, -1) <= 0 then
        redis.call('HDEL', campaign, 'u:' .. r.user)
      end
      emit(stream, rid, r, now)
      released = released + 1
    end
  end
  emit_group(stream, gk, gid, now)
  return released
end

-- Gives `user` a slot of group `gid`: a held reservation of one unit.
-- keys: {campaign, group idempotency, expiry list, stream}; returns the reservation's expiry
local function add_member(keys, gid, user, rid, now, hold, idem, fp)
  local gk = keys[1] .. ':g:' .. gid
  local r = {status = 'held', user = user, qty = 1, created = tonumber(now),
    expires = tonumber(now) + tonumber(hold) * 1000, group = gid}
  put_reservation(keys[1], rid, r)
  redis.call('RPUSH', keys[3], rid)
  redis.call('HINCRBY', keys[1], 'u:' .. user, 1)
  redis.call('HINCRBY', gk, 'active', 1)
  redis.call('RPUSH', gk .. ':m', rid)
  redis.call('HSET', gk .. ':mu', user, rid)
  redis.call('HSET', keys[2], idem, gid .. '|' .. fp)
  emit(keys[4], rid, r, now, idem, fp)
  return r.expires
end
