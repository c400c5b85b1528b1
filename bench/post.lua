-- wrk script (bench/wrk.py): POST one body read from a file, with the headers named in the
-- environment, and print a one-line JSON summary that bench/wrk.py parses.
--   WRK_BODY=path WRK_CONTENT_TYPE=... WRK_API_KEY=... wrk -s bench/post.lua URL
wrk.method = "POST"
local file = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
local key = os.getenv("WRK_API_KEY")
if key and key ~= "" then
  wrk.headers["x-api-key"] = key
end

-- WRK_DELAY_MS: each connection waits that long before each request (bench/e2e.py --rate).
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
