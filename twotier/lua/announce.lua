-- Announce changed keys (a set or delete, done by entry-slot calls before
-- this), and note how long the written entry may live (compaction's horizon).
-- KEYS, ARGV: the control-script convention (prelude); then horizon ms (0 = none),
-- where each key's entry change stands in its shard (SEP-joined, '' = not known:
-- see entry_written), keys...
meet()
local seq = next_seq(KEYS[2], KEYS[3])
local horizon = tonumber(ARGV[5])
if horizon > 0 and versions_of(KEYS[1], {}) then note_horizon(KEYS[1], horizon) end
local keys = {}
for i = 7, #ARGV do keys[#keys + 1] = ARGV[i] end
return announce(
  seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'k', table.concat(keys, SEP), ARGV[6]
)
