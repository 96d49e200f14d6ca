-- invalidate_tags() and clear(): O(1) per tag, whatever the number of entries.
-- Each tag's version becomes this change's number (or more, if the counter was
-- ever lost), so a version never returns to a value an old entry was stored
-- under; clear() draws a new namespace generation, which every entry's
-- versions include. The bump time of each tag goes into a sorted set, from
-- which compact.lua later drops versions no live entry can carry any more.
-- The client sends at most a thousand tags per call (Lua's unpack limit).
-- KEYS: tag-version hash, seq, log, bump times
-- ARGV: origin, channel, log maxlen, kind ('t' or 'c'), tags...
local seq = next_seq(KEYS[2], KEYS[3])
local fields = {''}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local current = redis.pcall('HMGET', KEYS[1], unpack(fields))
if current['err'] then
  redis.call('DEL', KEYS[1])   -- foreign data: start afresh, under a new generation
  current = {}
end
if ARGV[4] == 'c' or not current[1] then
  -- clear(), or the hash was lost: every entry stored so far becomes invalid
  new_namespace_generation(KEYS[1], KEYS[4], seq)
end
if ARGV[4] == 't' then
  local updates, bumps = {}, {}
  local now = redis.call('TIME')
  local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
  for i = 2, #fields do
    updates[#updates + 1] = fields[i]
    updates[#updates + 1] = math.max(seq, (tonumber(current[i]) or 0) + 1)
    bumps[#bumps + 1] = now_ms
    bumps[#bumps + 1] = fields[i]
  end
  redis.call('HSET', KEYS[1], unpack(updates))
  local added = redis.pcall('ZADD', KEYS[4], unpack(bumps))
  if type(added) == 'table' and added['err'] then
    redis.call('DEL', KEYS[4])   -- foreign data under our name
    redis.call('ZADD', KEYS[4], unpack(bumps))
  end
end
return announce(seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], table.concat(fields, SEP, 2))
