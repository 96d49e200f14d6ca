-- warmup: read_one for many keys in one call, with a compact reply: one
-- character per key — '2' a valid entry is in Redis already, '1' the fill lease
-- is ours, '0' someone else is loading the key, 'x' foreign data was found (and
-- deleted) — and the version snapshot every lease-holder fills under. All keys
-- share one lease token.
-- KEYS: tag-version hash, then entry and lease of each key
-- ARGV: lease ttl ms, tags joined by SEP, lease token
local wanted = split(ARGV[2])
local codes = {}
for i = 2, #KEYS, 2 do
  local reply = read_one(KEYS[i], KEYS[i + 1], ARGV[3], ARGV[1], wanted, 0, true)
  if reply[1] == 1 then
    codes[#codes + 1] = '2'
  elseif reply[1] == 0 then
    codes[#codes + 1] = tostring(reply[2])
  else
    codes[#codes + 1] = 'x'
  end
end
-- One string of codes, not an array: the client parses one reply line per batch.
return {table.concat(codes), versions_of(wanted)}
