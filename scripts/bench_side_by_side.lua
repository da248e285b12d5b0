-- wrk script of scripts/bench_side_by_side.py: every request is a pre-built POST of the same body with its own
-- headers (pre-signed Sluice headers: each nonce once). Arguments: the headers file (one request a line,
-- tab-separated name/value pairs), the thread count and the body file; thread k sends lines k, k + threads, ...
-- A thread that runs out starts over (replays: refused by Sluice, counted as `wrapped` and in non2xx).
local threads = {}
local count = 0

function setup(thread)
  thread:set("id", count)
  count = count + 1
  table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
wrapped = 0

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  local f = io.open(args[3], "rb")
  local body = f:read("*a")
  f:close()
  local line_no = 0
  for line in io.lines(file) do
    if line_no % nthreads == id then
      local headers = {}
      for k, v in string.gmatch(line, "([^\t]+)\t([^\t]+)") do headers[k] = v end
      n = n + 1
      reqs[n] = wrk.format("POST", nil, headers, body)
    end
    line_no = line_no + 1
  end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    if n > 1 then wrapped = wrapped + 1 end
  end
  return reqs[i]
end

refused = 0
first_refusal = ""

function response(status, headers, body)
  if status >= 300 then
    refused = refused + 1
    if refused == 1 then first_refusal = status .. " " .. string.sub(body, 1, 300) end
  end
end

function done(summary, latency, requests)
  local wraps = 0
  local refusal = ""
  for _, thread in ipairs(threads) do
    wraps = wraps + (thread:get("wrapped") or 0)
    if refusal == "" then refusal = thread:get("first_refusal") or "" end
  end
  io.write("WRKREFUSAL " .. refusal .. "\n")
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"mean_us":%.1f,"wrapped":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, wraps))
end
