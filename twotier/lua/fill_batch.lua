-- warmup: fill_one for many keys sharing a TTL, tags, lease token and snapshot.
-- KEYS: tag-version hash, then entry and lease of each key
-- ARGV: channel, origin, ttl ms, tags joined by SEP, lease token, snapshot,
--       entry key prefix, horizon ms, then one payload per key
local prefix = #ARGV[7]
local current = versions_of(split(ARGV[4]))  -- the same tags for every key: read them once
local results = {}
for i = 2, #KEYS, 2 do
  local key = string.sub(KEYS[i], prefix + 1)
  results[#results + 1] = fill_one(KEYS[i], KEYS[i + 1], ARGV[5], ARGV[3], ARGV[8 + i / 2],
                                   ARGV[4], ARGV[6], ARGV[1], ARGV[2], key, current, ARGV[8])
end
return table.concat(results)  -- '1' stored, '0' refused, one character per key
