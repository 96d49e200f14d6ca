-- The request mix of integration/bench_http.py for wrk (docs/performance.md, "HTTP").
--
--   wrk -t2 -c4 -d10s -s integration/bench_http.lua http://127.0.0.1:8080
--
-- 90 % reads, 10 % writes; the ids of every entity drawn from a Zipf
-- distribution (exponent BENCH_ZIPF_S, default 1.1): charge 1 is asked for far
-- more often than charge 200, as the "frequently queried" entries of the seed.
-- The writes are the service's own: PUT /charges/{id}, PUT /articles/{id},
-- POST /inventory/{id}/movements, each invalidating its tags (or, with
-- ERP_INVALIDATION=clear, clearing the cache). At the end, one JSON line
-- prefixed "BENCH " with the latency percentiles (µs), requests and errors, and
-- one prefixed "XCACHE " counting the answers by their X-Cache header.

local S = tonumber(os.getenv("BENCH_ZIPF_S") or "1.1")
local CATEGORIES = { "tools", "fasteners", "electrical", "plumbing", "safety" }
local WAREHOUSES = { "north", "south" }
local JSON = { ["Content-Type"] = "application/json" }

local function zipf_table(n)
  local cumulative, total = {}, 0
  for i = 1, n do
    total = total + 1 / i ^ S
    cumulative[i] = total
  end
  for i = 1, n do
    cumulative[i] = cumulative[i] / total
  end
  return cumulative
end

local function draw(cumulative)
  local u, lo, hi = math.random(), 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local charges, articles, customers, users

-- Reads and writes, each weighted within its kind; BENCH_WRITES (default 10) per
-- cent of the requests are writes.
local WRITES = tonumber(os.getenv("BENCH_WRITES") or "10")
local reads = {
  { 24, function() return wrk.format("GET", "/charges/" .. draw(charges)) end },
  { 18, function() return wrk.format("GET", "/articles/" .. draw(articles)) end },
  { 14, function() return wrk.format("GET", "/inventory/" .. draw(articles)) end },
  { 10, function() return wrk.format("GET", "/customers/" .. draw(customers)) end },
  { 5, function()
      return wrk.format("GET", "/articles?category=" .. CATEGORIES[draw(users)])
    end },
  { 4, function()
      return wrk.format("GET", "/dashboard", { ["X-User-Id"] = tostring(draw(users)) })
    end },
  { 4, function() return wrk.format("GET", "/charges") end },
  { 4, function() return wrk.format("GET", "/charges/stats") end },
  { 4, function() return wrk.format("GET", "/reports/revenue") end },
  { 3, function() return wrk.format("GET", "/inventory/stats") end },
}
local writes = {
  { 5, function()
      local amount = string.format("%d.%02d", math.random(10, 5000), math.random(0, 99))
      return wrk.format("PUT", "/charges/" .. draw(charges), JSON, '{"amount": "' .. amount .. '"}')
    end },
  { 2, function()
      local price = string.format("%d.%02d", math.random(1, 500), math.random(0, 99))
      return wrk.format("PUT", "/articles/" .. draw(articles), JSON, '{"price": "' .. price .. '"}')
    end },
  { 3, function()
      local body = '{"warehouse": "' .. WAREHOUSES[math.random(1, 2)] .. '", "delta": 1}'
      return wrk.format("POST", "/inventory/" .. draw(articles) .. "/movements", JSON, body)
    end },
}

local function pick(entries)
  local total = 0
  for _, entry in ipairs(entries) do total = total + entry[1] end
  local r, acc = math.random() * total, 0
  for _, entry in ipairs(entries) do
    acc = acc + entry[1]
    if r <= acc then return entry[2]() end
  end
  return entries[#entries][2]()
end

local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  charges, articles, customers, users = zipf_table(200), zipf_table(100), zipf_table(50), zipf_table(5)
  xcache = {}  -- X-Cache of the answers, per value: MISS, L1, L2, STALE
end

function request()
  if math.random() * 100 < WRITES then return pick(writes) end
  return pick(reads)
end

function response(status, headers, body)
  local value = headers["x-cache"] or headers["X-Cache"]
  if value then xcache[value] = (xcache[value] or 0) + 1 end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "seconds": %.3f, "rps": %.1f, "mean_us": %.1f, "p50_us": %d, '
      .. '"p90_us": %d, "p99_us": %d, "max_us": %d, "status_errors": %d, "socket_errors": %d}\n',
    summary.requests, seconds, summary.requests / seconds, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
  local merged = {}
  for _, thread in ipairs(threads) do
    for value, n in pairs(thread:get("xcache") or {}) do merged[value] = (merged[value] or 0) + n end
  end
  local parts = {}
  for value, n in pairs(merged) do table.insert(parts, string.format('"%s": %d', value, n)) end
  io.write("XCACHE {" .. table.concat(parts, ", ") .. "}\n")
end
