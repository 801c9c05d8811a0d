-- The id of the last entry the campaign's event stream ever got (kept when its entries are
-- deleted), or '' if the campaign has no stream.
-- KEYS[1] event stream
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return ''
