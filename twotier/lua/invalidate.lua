-- invalidate_tags() and clear(): O(1) per tag, whatever the number of entries.
-- Each tag's version becomes this change's number (or more, if the counter was
-- ever lost), so a version never returns to a value an old entry was stored
-- under; clear() draws a new namespace generation, which every entry carries.
-- The bump time of each tag goes into a sorted set, from which compact.lua
-- later drops versions no live entry can carry any more. The message carries
-- the new versions (or generation): the other instances' mirrors take them.
-- The client sends at most a thousand tags per call (Lua's unpack limit).
-- KEYS, ARGV: the control-script convention (prelude); then kind ('t' or 'c'), tags...
-- Returns {generation, version...}
meet()
local seq = next_seq(KEYS[2], KEYS[3])
local tags = {}
for i = 6, #ARGV do tags[#tags + 1] = ARGV[i] end
local current = versions_of(KEYS[1], tags)
if ARGV[5] == 'c' or not current then
  -- clear(), or the hash was lost: every entry stored so far becomes invalid
  local generation = new_namespace_generation(KEYS[1], KEYS[4], seq)
  -- a lost hash is the server's doing: every instance, this one too, applies it
  local origin = ARGV[5] == 'c' and ARGV[1] or 'server'
  announce(seq, KEYS[3], origin, ARGV[2], ARGV[3], ARGV[4], 'c', generation)
  if ARGV[5] == 'c' then return {generation} end
  seq = next_seq(KEYS[2], KEYS[3])   -- the bump below is a change of its own
  current = versions_of(KEYS[1], tags)
end
local updates, bumps, pairs, reply = {}, {}, {}, {current[1]}
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
for i = 1, #tags do
  local version = tostring(math.max(seq, (tonumber(current[i + 1]) or 0) + 1))
  updates[#updates + 1] = tags[i]
  updates[#updates + 1] = version
  bumps[#bumps + 1] = now_ms
  bumps[#bumps + 1] = tags[i]
  reply[#reply + 1] = version
end
redis.call('HSET', KEYS[1], unpack(updates))
local added = redis.pcall('ZADD', KEYS[4], unpack(bumps))
if type(added) == 'table' and added['err'] then
  redis.call('DEL', KEYS[4])   -- foreign data under our name
  redis.call('ZADD', KEYS[4], unpack(bumps))
end
announce(seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 't', table.concat(updates, SEP))
return reply
