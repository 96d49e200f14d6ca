-- One round trip for an L2 read (see read_one in the prelude).
-- KEYS: tag-version hash, entry, lease
-- ARGV: lease token ('' = no lease wanted), lease ttl ms, min ttl ms, the caller's tags...
local wanted = {}
for i = 4, #ARGV do wanted[#wanted + 1] = ARGV[i] end
return read_one(KEYS[2], KEYS[3], ARGV[1], ARGV[2], wanted, tonumber(ARGV[3]))
