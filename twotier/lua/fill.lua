-- Store one loaded value, conditionally (see fill_one in the prelude).
-- KEYS: tag-version hash, entry, lease
-- ARGV: lease token, ttl ms, payload, tags joined by SEP, snapshot, channel, origin, key,
--       horizon ms (ttl + lease ttl)
return fill_one(KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                ARGV[6], ARGV[7], ARGV[8], nil, ARGV[9])
