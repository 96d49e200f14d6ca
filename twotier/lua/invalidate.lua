-- invalidate_tags() and clear(): O(1) per tag, whatever the number of entries.
-- Each tag's version becomes this change's sequence number (or more), so a
-- version never returns to a value an old entry was stored under; clear()
-- draws a new namespace generation, which every entry's versions include.
-- KEYS: tag-version hash, seq, log
-- ARGV: origin, channel, log maxlen, kind ('t' or 'c'), tags...
local seq = tonumber(redis.pcall('GET', KEYS[2])) or 0
seq = seq + 1
versions_of({})  -- repairs a missing or foreign hash before we write to it
if ARGV[4] == 'c' then
  redis.call('HSET', KEYS[1], '', new_generation(seq))
else
  for i = 5, #ARGV do
    -- max() keeps a tag's versions increasing even if the counter was lost.
    local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i])) or 0
    redis.call('HSET', KEYS[1], ARGV[i], math.max(seq, current + 1))
  end
end
local body = {}
for i = 5, #ARGV do body[#body + 1] = ARGV[i] end
return announce(KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], table.concat(body, SEP))
