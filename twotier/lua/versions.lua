-- The version mirror's load: the generation and the versions of some tags, in
-- one control-slot call. A lost or foreign version hash starts a new
-- generation, announced as a clear to every instance (guarantee 9).
-- With a horizon, it also notes how long entries the caller stores from now on
-- may live (compaction's horizon).
-- It always meets the server, even on a connection that met it when it opened:
-- versions read here judge entries, and a connection can outlive the dataset
-- behind it (a proxy that keeps client connections across a failover, a live
-- REPLICAOF). The scripts that only change versions skip it (meet()); what
-- they change on such a server is caught by the listener, whose next message
-- or idle check finds the counter gone back, and resyncs (which meets).
-- KEYS, ARGV: the control-script convention (prelude); then horizon ms (0 = none), tags...
-- Returns {generation, version...}
meet_server()
local tags = {}
for i = 6, #ARGV do tags[#tags + 1] = ARGV[i] end
local versions = versions_of(KEYS[1], tags)
if not versions then
  local seq = next_seq(KEYS[2], KEYS[3])
  local generation = new_namespace_generation(KEYS[1], KEYS[4], seq)
  announce(seq, KEYS[3], 'server', ARGV[2], ARGV[3], ARGV[4], 'c', generation)
  versions = versions_of(KEYS[1], tags)
end
if tonumber(ARGV[5]) > 0 then note_horizon(KEYS[1], tonumber(ARGV[5])) end
return versions
