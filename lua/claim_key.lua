-- Claims a store's idempotency key for one request body in a sharded campaign: the key's
-- shard (a hash of the key) remembers the first body it came with, so the same key sent for
-- another user — whose attempt goes to another shard — is refused as reused.
-- KEYS[1]  the key's shard hash   KEYS[2] its claims hash (scoped key → fingerprint)
-- ARGV[1]  scoped key   ARGV[2] fingerprint
-- returns  1 claimed now, 0 claimed before with this body, -1 with another, -2 shard missing
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then return 1 end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return 0 end
return -1
