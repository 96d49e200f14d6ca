-- delete() in a cluster: one key's entry and fill lease (one slot), and where
-- the deletion stands in the shard's replication, for its announcement (a
-- shard that loses it in a failover is repaired from the log: `_shards.py`).
-- KEYS: entry, lease
redis.call('DEL', KEYS[1], KEYS[2])
return entry_written(#KEYS[1] + #KEYS[2])
