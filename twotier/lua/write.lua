-- set(): store under the current versions, revoke any fill lease, announce.
-- The change number is taken first: if it cannot be, nothing has changed.
-- KEYS: tag-version hash, seq, log, entry, lease
-- ARGV: origin, channel, log maxlen, payload, ttl ms, tags joined by SEP, key, horizon ms
local seq = next_seq(KEYS[2], KEYS[3])
note_horizon(KEYS[1], tonumber(ARGV[8]))
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('HSET', KEYS[4], 'p', ARGV[4], 't', ARGV[6], 'v', versions_of(split(ARGV[6])))
redis.call('PEXPIRE', KEYS[4], ARGV[5])
return announce(seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], 'k', ARGV[7])
