-- delete(): remove entries and revoke their fill leases, announce.
-- KEYS: tag-version hash, seq, log, then entry and lease of each key
-- ARGV: origin, channel, log maxlen, keys joined by SEP
local seq = next_seq(KEYS[2], KEYS[3])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return announce(seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], 'k', ARGV[4])
