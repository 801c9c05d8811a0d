-- Reads one reservation (lib.lua: get_reservation).
-- KEYS[1] campaign hash   KEYS[2] reservations hash   ARGV[1] reservation id
-- returns {} if there is none; else {user, qty, status, created, expires, group}
local r = get_reservation(KEYS[1], ARGV[1])
if not r then return {} end
local a = answer_reservation('', r)
table.remove(a, 1)
return a
