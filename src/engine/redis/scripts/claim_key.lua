-- Claims store idempotency keys, each for one request body, in a sharded campaign: the key's
-- shard (a hash of the key) remembers the first body each came with, so the same key sent for
-- another user — whose attempt goes to another shard — is refused as reused. A batch of
-- claims (group commit, like reserves) in one call, decided in order.
-- KEYS[1]  the keys' shard hash   KEYS[2] its claims hash (scoped key → fingerprint)
-- ARGV     scoped key, fingerprint, scoped key, fingerprint, ...
-- returns  one answer per claim: 1 claimed now, 0 claimed before with this body, -1 with
--          another; {-2} alone if the shard is missing
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local answers = {}
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    answers[#answers + 1] = 1
  elseif redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    answers[#answers + 1] = 0
  else
    answers[#answers + 1] = -1
  end
end
return answers
