-- Drop the versions of tags last bumped longer ago than any entry can live
-- (guarantee 10: metadata bounded by the entries, not by every tag ever used).
-- Safe because an entry that could match a dropped tag's absent version ('0')
-- was stored before that tag's last bump, and every such entry has expired:
-- it lived at most the horizon (its TTL, plus the lease time a fill may take
-- after its snapshot), and `margin` more covers a snapshot taken from a mirror
-- that had not yet heard of the bump. Entries stored after the bump carry the
-- bumped version, which no longer matches '0': they become misses, never
-- stale. Without a recorded horizon (lost with the hash), nothing is dropped.
-- The drop is announced ('x'), so that mirrors forget those versions too.
-- KEYS, ARGV: the control-script convention (prelude); then the most fields
-- to drop, margin ms
meet()
local horizon = tonumber(redis.call('HGET', KEYS[1], '\31horizon') or '')
if not horizon or redis.call('TYPE', KEYS[4])['ok'] ~= 'zset' then return 0 end
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - horizon - tonumber(ARGV[6])
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[5])
if #old == 0 then return 0 end
local seq = next_seq(KEYS[2], KEYS[3])
redis.call('HDEL', KEYS[1], unpack(old))
redis.call('ZREM', KEYS[4], unpack(old))
announce(seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'x', table.concat(old, SEP))
return #old
