-- warmup: read_one for many keys in one call (one command to encode, not N).
-- KEYS: tag-version hash, then entry and lease of each key
-- ARGV: lease ttl ms, tags joined by SEP, then one lease token per key
local wanted = split(ARGV[2])
local replies = {}
for i = 2, #KEYS, 2 do
  replies[#replies + 1] = read_one(KEYS[i], KEYS[i + 1], ARGV[2 + i / 2], ARGV[1], wanted, 0)
end
return replies
