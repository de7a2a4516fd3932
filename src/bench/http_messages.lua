-- wrk script of `vcos bench http`: POST /v1/tenants/{tenant}/imvus/{id}/messages with
-- {"message":{"op":"add","n":1}}, round robin over counter IMVUs (each thread starting at its
-- own offset), with the tenant key of $VCOS_API_KEY when set. Written to a temporary file and
-- configured through the environment:
--   VCOS_BENCH_TENANT       the tenant;
--   VCOS_BENCH_IMVUS        the IMVUs' ids, comma separated;
--   VCOS_BENCH_THREADS      wrk's threads (they start evenly apart on the IMVUs);
--   VCOS_BENCH_THREAD_RATE  requests/s of each wrk thread (0 or unset: as fast as answered).
-- Paced runs schedule each thread's requests on a fixed grid (one slot every 1/rate s, from
-- the monotonic clock through LuaJIT's FFI): `delay()` gives a connection that is ready the
-- next free slot. wrk's timers have millisecond resolution, so a request leaves up to 1 ms
-- before its slot; the grid keeps the rate. A grid more than 10 ms behind (the server slower
-- than the rate) restarts from now rather than catching up in a burst: the achieved rate
-- shows it. wrk measures latency from the send, so a paced run's percentiles are those of the
-- requests sent (no coordinated-omission correction).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } vcos_bench_timespec;
int clock_gettime(int clk_id, vcos_bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("vcos_bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local BODY = '{"message":{"op":"add","n":1}}'
local tenant = os.getenv("VCOS_BENCH_TENANT") or "default"
local ids = {}
for id in string.gmatch(os.getenv("VCOS_BENCH_IMVUS") or "", "[^,]+") do
  ids[#ids + 1] = id
end
local rate = tonumber(os.getenv("VCOS_BENCH_THREAD_RATE") or "0") or 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("VCOS_API_KEY")
if key then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)  -- a global in the thread's Lua state
end

local paths = {}
local counter = 0
function init(args)
  for i, id in ipairs(ids) do
    paths[i] = "/v1/tenants/" .. tenant .. "/imvus/" .. id .. "/messages"
  end
  if #paths == 0 then
    error("VCOS_BENCH_IMVUS names no IMVU")
  end
  -- Threads start evenly apart on the ring of IMVUs.
  local threads = tonumber(os.getenv("VCOS_BENCH_THREADS") or "1") or 1
  counter = ((tid or 1) - 1) * math.floor(#paths / math.max(threads, 1))
end

function request()
  counter = counter + 1
  return wrk.format(nil, paths[(counter % #paths) + 1], nil, BODY)
end

-- Defined only for paced runs: a `delay` function at all makes wrk arm a timer per request.
if rate > 0 then
  local period_ms = 1000 / rate
  local next_ms = nil
  function delay()
    local now = now_ms()
    if next_ms == nil or next_ms < now - 10 then
      next_ms = now
    end
    next_ms = next_ms + period_ms
    local wait = next_ms - now
    if wait < 1 then
      return 0
    end
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT ops_s=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f reqs=%d status_errors=%d socket_errors=%d timeouts=%d secs=%.3f\n",
    summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
    summary.requests, e.status, e.connect + e.read + e.write, e.timeout, secs))
end
