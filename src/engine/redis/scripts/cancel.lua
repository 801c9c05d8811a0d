-- -> cancelled, units return. A hold found past its expiry expires instead.
-- KEYS[1]  campaign hash   KEYS[2] reservation hash   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] reservation id
-- ARGV[3]  'held' (only held ones may be cancelled) | 'any' (confirmed ones too: a refund;
--          not a member of a formed group, whose units are sold as a whole)
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held'; or {'not_found'}
local r = redis.call('HMGET', KEYS[2], 'status', 'qty', 'user', 'group', 'expires')
if not r[1] then return {'not_found'} end
local formed = false
if r[4] and r[4] ~= '' then
  fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], r[4], ARGV[1])
  r = redis.call('HMGET', KEYS[2], 'status', 'qty', 'user', 'group', 'expires')
  formed = redis.call('HGET', KEYS[1] .. ':g:' .. r[4], 'status') == 'formed'
end
local outcome = 'not_held'
if r[1] == 'cancelled' then
  outcome = 'unchanged'
elseif r[1] == 'held' and tonumber(ARGV[1]) >= tonumber(r[5]) then
  release(KEYS[1], KEYS[3], KEYS[2], ARGV[2], r, 'expired', ARGV[1])
elseif r[1] == 'held' or (r[1] == 'confirmed' and ARGV[3] == 'any' and not formed) then
  release(KEYS[1], KEYS[3], KEYS[2], ARGV[2], r, 'cancelled', ARGV[1])
  outcome = 'done'
end
local now = redis.call('HMGET', KEYS[2], 'user', 'qty', 'status', 'created', 'expires', 'group')
return {outcome, now[1], now[2], now[3], now[4], now[5], now[6] or ''}
