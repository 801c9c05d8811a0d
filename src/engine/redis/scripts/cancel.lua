-- -> cancelled, units return. A hold found past its expiry expires instead.
-- KEYS[1]  campaign hash   KEYS[2] reservations hash (lib.lua)   KEYS[3] event stream
-- KEYS[4]  group expiry sorted set
-- ARGV[1]  now (ms)        ARGV[2] reservation id
-- ARGV[3]  'held' (only held ones may be cancelled) | 'any' (confirmed ones too: a refund;
--          not a member of a formed group, whose units are sold as a whole)
-- returns  {outcome, user, qty, status, created, expires, group}, outcome one of
--          'done' | 'unchanged' | 'not_held'; or {'not_found'}
local r = get_reservation(KEYS[1], ARGV[2])
if not r then return {'not_found'} end
local formed = false
if r.group ~= '' then
  fail_group_if_due(KEYS[1], KEYS[4], KEYS[3], r.group, ARGV[1])
  r = get_reservation(KEYS[1], ARGV[2])
  formed = redis.call('HGET', KEYS[1] .. ':g:' .. r.group, 'status') == 'formed'
end
local outcome = 'not_held'
if r.status == 'cancelled' then
  outcome = 'unchanged'
elseif r.status == 'held' and tonumber(ARGV[1]) >= r.expires then
  release(KEYS[1], KEYS[3], ARGV[2], r, 'expired', ARGV[1])
elseif r.status == 'held' or (r.status == 'confirmed' and ARGV[3] == 'any' and not formed) then
  release(KEYS[1], KEYS[3], ARGV[2], r, 'cancelled', ARGV[1])
  outcome = 'done'
end
return answer_reservation(outcome, r)
