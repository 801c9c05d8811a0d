-- wrk driver for scale-bench.sh: creates COUNT idle flash sales `<PREFIX>-<n>` (stock 10), a
-- new idempotency key each, then stops. One thread (wrk -t1): the counter is the thread's.
local token = os.getenv("ADMIN_TOKEN") or "adm"
local prefix = os.getenv("PREFIX") or "idle"
local first = tonumber(os.getenv("FIRST") or "0")
local count = tonumber(os.getenv("COUNT") or "0")
local n, answered, failed = first, 0, 0
function request()
  -- Past COUNT (connections still asking before the stop): the last one again, a replay.
  local id = prefix .. "-" .. math.min(n, first + count - 1)
  n = n + 1
  local body = '{"id":"' .. id .. '","kind":"flash_sale","sku":"idle","stock":10,"per_user_limit":1}'
  local h = {["content-type"] = "application/json", ["authorization"] = "Bearer " .. token,
    ["idempotency-key"] = "create-" .. id}
  return wrk.format("POST", "/v1/campaigns", h, body)
end
function response(status, headers, body)
  answered = answered + 1
  if status >= 300 then failed = failed + 1 end
  if answered >= count then wrk.thread:stop() end
end
function done(summary, latency, requests)
  io.write(string.format("created: requests=%d non2xx=%d\n", summary.requests, summary.errors.status))
end
