-- Reads a group and its members in one step.
-- KEYS[1] campaign hash   ARGV[1] group id
-- returns {} if no such group; else {leader, size, status, created, expires,
--          user, reservation id, status, user, reservation id, status, ...} in join order
local gk = KEYS[1] .. ':g:' .. ARGV[1]
local g = redis.call('HMGET', gk, 'leader', 'size', 'status', 'created', 'expires')
if not g[1] then return {} end
for _, rid in ipairs(redis.call('LRANGE', gk .. ':m', 0, -1)) do
  local r = get_reservation(KEYS[1], rid) or {}
  table.insert(g, r.user or false)
  table.insert(g, rid)
  table.insert(g, r.status or false)
end
return g
