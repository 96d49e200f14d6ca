-- invalidate_tags() and clear(): O(1) per tag, whatever the number of entries.
-- Each tag's version becomes this change's sequence number, which is unique,
-- so a version can never return to a value an old entry was stored under.
-- KEYS: tag-version hash, seq, log
-- ARGV: origin, channel, log maxlen, kind ('t' or 'c'), tags...
local seq = redis.call('GET', KEYS[2])
seq = (tonumber(seq) or 0) + 1
local function bump(field)
  -- max() keeps versions increasing even if the counter was lost (evicted).
  local current = tonumber(redis.call('HGET', KEYS[1], field)) or 0
  redis.call('HSET', KEYS[1], field, math.max(seq, current + 1))
end
if ARGV[4] == 'c' then
  bump('')
else
  for i = 5, #ARGV do bump(ARGV[i]) end
end
local body = {}
for i = 5, #ARGV do body[#body + 1] = ARGV[i] end
return announce(KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], table.concat(body, SEP))
