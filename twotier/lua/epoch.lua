-- A server the namespace has not seen before (a restart, a restore from an
-- older snapshot, a promoted replica): its tag versions may be older than the
-- entries' invalidations, so entries it holds could look valid again. Unless
-- the namespace's current generation was drawn on this very server run, draw
-- a new one and announce it as a clear (guarantee 9: nothing comes back).
-- Idempotent: of many instances meeting the new server, one draws.
-- KEYS: tag-version hash, seq, log, bump times, epoch (the run id of the generation)
-- ARGV: origin, channel, log maxlen, sent ms, the server's run id
if redis.call('GET', KEYS[5]) == ARGV[5] then return 0 end
local seq = next_seq(KEYS[2], KEYS[3])
redis.pcall('DEL', KEYS[1])
local generation = new_namespace_generation(KEYS[1], KEYS[4], seq)
redis.call('SET', KEYS[5], ARGV[5])
-- from 'server', not from this instance: every instance, this one too, applies it
announce(seq, KEYS[3], 'server', ARGV[2], ARGV[3], ARGV[4], 'c', generation)
return 1
