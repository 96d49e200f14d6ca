-- warmup: fill_one for many keys in one call.
-- KEYS: tag-version hash, then entry and lease of each key
-- ARGV: channel, origin, ttl ms, tags joined by SEP, then per key: key, token, payload, snapshot
local results = {}
for i = 2, #KEYS, 2 do
  local a = 4 + (i - 2) * 2   -- the key's first argument, minus one
  results[#results + 1] = fill_one(KEYS[i], KEYS[i + 1], ARGV[a + 2], ARGV[3], ARGV[a + 3],
                                   ARGV[4], ARGV[a + 4], ARGV[1], ARGV[2], ARGV[a + 1])
end
return results
