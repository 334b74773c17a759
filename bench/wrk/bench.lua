-- wrk script for the myflask benchmark.
--
-- BENCH_BODY_SIZE=0 (default): GET BENCH_PATH (default /), no response hook
-- (so wrk does not hand bodies to Lua and stays fast).
-- BENCH_BODY_SIZE=N>0: POST N bytes to /echo and check that every response
-- body is N bytes long (counted as "bad_len" otherwise).
-- done() prints one line "BENCHJSON {...}" that bench.py parses.

local size = tonumber(os.getenv("BENCH_BODY_SIZE") or "0") or 0
local threads = {}

if size > 0 then
  wrk.method = "POST"
  wrk.path = "/echo"
  wrk.body = string.rep("x", size)
  wrk.headers["Content-Type"] = "application/octet-stream"
else
  wrk.method = "GET"
  wrk.path = os.getenv("BENCH_PATH") or "/"
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  checked = 0
  bad_len = 0
end

if size > 0 then
  function response(status, headers, body)
    checked = checked + 1
    if body == nil or #body ~= size then
      bad_len = bad_len + 1
    end
  end
end

function done(summary, latency, requests)
  local ck, bl = 0, 0
  for _, t in ipairs(threads) do
    ck = ck + (t:get("checked") or 0)
    bl = bl + (t:get("bad_len") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"checked":%d,"bad_len":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, ck, bl))
end
