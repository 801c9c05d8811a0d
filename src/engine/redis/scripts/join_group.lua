-- Joins an open group: one of its slots becomes the joiner's held reservation. Order of
-- checks: campaign exists, idempotency key seen, group exists, open and inside its window
-- (one past its window fails here), already a member, full, per-user limit.
-- KEYS[1] campaign hash   KEYS[2] group idempotency hash   KEYS[3] expiry list
-- KEYS[4] event stream    KEYS[5] a key that never exists (Keys::fresh: a half-moved slot refuses the script)   KEYS[6] group expiry sorted set
-- ARGV[1] now (ms)  ARGV[2] user  ARGV[3] scoped idempotency key  ARGV[4] fingerprint
-- ARGV[5] the group's id  ARGV[6] the joiner's reservation id
-- returns {'done', gid} | {'replay', gid} | {'key_reused'} | {refusal code}
local c = redis.call('HMGET', KEYS[1], 'limit', 'hold')
if not c[1] then return {'group_not_found'} end
local seen = redis.call('HGET', KEYS[2], ARGV[3])
if seen then
  local bar = string.find(seen, '|', 1, true)
  if string.sub(seen, bar + 1) ~= ARGV[4] then return {'key_reused'} end
  return {'replay', string.sub(seen, 1, bar - 1)}
end
local gk = KEYS[1] .. ':g:' .. ARGV[5]
fail_group_if_due(KEYS[1], KEYS[6], KEYS[4], ARGV[5], ARGV[1])
local g = redis.call('HMGET', gk, 'status', 'size', 'active')
if not g[1] then return {'group_not_found'} end
if g[1] ~= 'open' then return {'group_closed'} end
local mine = redis.call('HGET', gk .. ':mu', ARGV[2])
if mine then
  local r = get_reservation(KEYS[1], mine)
  if r and (r.status == 'held' or r.status == 'confirmed') then return {'already_member'} end
end
if tonumber(g[3]) >= tonumber(g[2]) then return {'group_full'} end
local had = tonumber(redis.call('HGET', KEYS[1], 'u:' .. ARGV[2]) or '0')
if had + 1 > tonumber(c[1]) then return {'limit_exceeded'} end
add_member(KEYS, ARGV[5], ARGV[2], ARGV[6], ARGV[1], c[2], ARGV[3], ARGV[4])
return {'done', ARGV[5]}
