-- warmup: read_one for many keys in one call, with a compact reply (one
-- element per key, so the client parses little): 2 = a valid entry is in Redis
-- already, 1 = the fill lease is ours, 0 = someone else is loading the key,
-- -1 = foreign data was found (and deleted). The last element is the version
-- snapshot every lease-holder fills under. All keys share one lease token.
-- KEYS: tag-version hash, then entry and lease of each key
-- ARGV: lease ttl ms, tags joined by SEP, lease token
local wanted = split(ARGV[2])
local out = {}
for i = 2, #KEYS, 2 do
  local reply = read_one(KEYS[i], KEYS[i + 1], ARGV[3], ARGV[1], wanted, 0)
  if reply[1] == 1 then
    out[#out + 1] = 2
  elseif reply[1] == 0 then
    out[#out + 1] = reply[2]
  else
    out[#out + 1] = -1
  end
end
out[#out + 1] = versions_of(wanted)
return out
