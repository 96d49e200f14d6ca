-- Conditional write of a loaded value (the no-stale-set guard): refused when the
-- lease was removed (a delete or set of the key happened) or any version moved
-- since the loader's snapshot (a tag invalidation or clear happened).
-- KEYS: tag-version hash, entry, lease
-- ARGV: lease token, ttl ms, payload, tags joined by SEP, snapshot
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3])
if versions_of(split(ARGV[4])) ~= ARGV[5] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'p', ARGV[3], 't', ARGV[4], 'v', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
