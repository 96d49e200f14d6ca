-- invalidate_tags() and clear(): O(1) per tag, whatever the number of entries.
-- Each tag's version becomes this change's number (or more, if the counter was
-- ever lost), so a version never returns to a value an old entry was stored
-- under; clear() draws a new namespace generation, which every entry's
-- versions include. Five commands whatever the number of tags.
-- KEYS: tag-version hash, seq, log
-- ARGV: origin, channel, log maxlen, kind ('t' or 'c'), tags...
local seq = next_seq(KEYS[2])
local fields = {''}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local current = redis.pcall('HMGET', KEYS[1], unpack(fields))
if current['err'] then
  redis.call('DEL', KEYS[1])   -- foreign data: start afresh, under a new generation
  current = {}
end
local updates = {}
if ARGV[4] == 'c' or not current[1] then
  -- clear(), or the hash was lost: every entry stored so far becomes invalid
  updates = {'', new_generation(seq)}
end
if ARGV[4] == 't' then
  for i = 2, #fields do
    updates[#updates + 1] = fields[i]
    updates[#updates + 1] = math.max(seq, (tonumber(current[i]) or 0) + 1)
  end
end
redis.call('HSET', KEYS[1], unpack(updates))
return announce(seq, KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], table.concat(fields, SEP, 2))
