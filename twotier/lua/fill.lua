-- Store a loaded value if the fill lease is still the caller's: a set() or
-- delete() of the key meanwhile removed it (the key-level half of the
-- no-stale-set guard; the tag half is the versions the entry carries).
-- KEYS: entry, lease (one slot)
-- ARGV: token@generation, entry, ttl ms
-- Returns 0 refused | 1 stored | 2 stored, and others wait for this lease
local contended = end_lease(KEYS[2], ARGV[1])
if contended == nil then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return contended and 2 or 1
