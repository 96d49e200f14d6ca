-- An entry found outdated: delete it now rather than keep it until its TTL,
-- but only if it is still that entry (its header), not one stored since.
-- KEYS: entry
-- ARGV: the outdated entry's header
local entry = redis.pcall('GET', KEYS[1])
if type(entry) == 'string' and string.sub(entry, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
