-- wrk script: v-COS canon put (PUT /v1/canon/kv/{key}, JSON body {"value": "..."}).
-- Mirrors ../shared/peers/etcd_put.lua: unique keys per thread/request ("bench/<thread>/<counter>",
-- the slashes percent-encoded in the path), a 256-byte value, and the same RESULT line
-- (non-2xx counted as errors by wrk).
local VALUE = string.rep('v', 256)
local BODY = '{"value":"' .. VALUE .. '"}'
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)  -- global in the thread's Lua state
end

local counter = 0
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("VCOS_API_KEY")
if key then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  counter = counter + 1
  local path = string.format("/v1/canon/kv/bench%%2F%d%%2F%010d", tid or 0, counter)
  return wrk.format(nil, path, nil, BODY)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errs = summary.errors.status + summary.errors.connect + summary.errors.read
             + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "RESULT ops_s=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f reqs=%d errors=%d\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    summary.requests, errs))
end
