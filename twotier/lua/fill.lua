-- Conditional write of a loaded value (the no-stale-set guard): refused when the
-- lease was removed (a delete or set of the key happened) or any version moved
-- since the loader's snapshot (a tag invalidation or clear happened).
-- Either way the lease ends; if others are waiting on it, they are told.
-- KEYS: tag-version hash, entry, lease
-- ARGV: lease token, ttl ms, payload, tags joined by SEP, snapshot, channel, origin, key
local stored = 0
if end_lease(KEYS[3], ARGV[1], ARGV[6], ARGV[7], ARGV[8]) ~= nil
    and versions_of(split(ARGV[4])) == ARGV[5] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'p', ARGV[3], 't', ARGV[4], 'v', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  stored = 1
end
return stored
