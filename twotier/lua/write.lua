-- set(): store the entry and revoke any fill lease, atomically (a fill holding
-- an older lease must not land after this write). The change is announced by
-- announce.lua on the control slot right after, with this script's reply
-- (where the write stands in the shard's replication, in a cluster).
-- KEYS: entry, lease (one slot)
-- ARGV: entry, ttl ms
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return entry_written(#ARGV[1] + #KEYS[1] + #KEYS[2])
