-- Removes one page of a forgotten campaign's keys (every key of a campaign but its hash
-- starts with the hash's key and a colon), on the node that serves the campaign's slot: a
-- cluster-wide SCAN from outside would have to visit every node.
-- KEYS[1]  campaign hash (already removed)
-- ARGV[1]  SCAN cursor   ARGV[2] page size
-- returns  the next cursor ('0': done)
local page = redis.call('SCAN', ARGV[1], 'MATCH', KEYS[1] .. ':*', 'COUNT', ARGV[2])
if #page[2] > 0 then
  redis.call('UNLINK', unpack(page[2]))
end
return page[1]
