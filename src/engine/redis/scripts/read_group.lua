-- Reads a group and its members in one step.
-- KEYS[1] campaign hash   ARGV[1] group id
-- returns {} if no such group; else {leader, size, status, created, expires,
--          user, reservation id, status, user, reservation id, status, ...} in join order
local gk = KEYS[1] .. ':g:' .. ARGV[1]
local g = redis.call('HMGET', gk, 'leader', 'size', 'status', 'created', 'expires')
if not g[1] then return {} end
for _, rid in ipairs(redis.call('LRANGE', gk .. ':m', 0, -1)) do
  local r = redis.call('HMGET', KEYS[1] .. ':r:' .. rid, 'user', 'status')
  table.insert(g, r[1])
  table.insert(g, rid)
  table.insert(g, r[2])
end
return g
