-- After an L2 miss: take the key's fill lease, unless someone else holds it or
-- an entry other than the one the caller rejected has been stored meanwhile.
-- A lease is `token@generation` ('+' appended once contended). A lease of an
-- older generation was taken before a clear() or on an earlier server run:
-- its fill would be judged outdated, and one that a snapshot restore brought
-- back has no holder at all. It is taken over, not waited on.
-- KEYS: entry, lease (one slot)
-- ARGV: token@generation, lease ttl ms, the rejected entry's header ('' = there was none)
-- Returns {1} the lease is ours | {0} someone else is loading | {2, entry}
local entry = redis.pcall('GET', KEYS[1])
if type(entry) == 'table' and entry['err'] then
  redis.call('DEL', KEYS[1])   -- foreign data under our entry's name
  entry = false
end
if entry and (ARGV[3] == '' or string.sub(entry, 1, #ARGV[3]) ~= ARGV[3]) then
  return {2, entry}
end
local generation = string.match(ARGV[1], '@(.*)$')
local held = redis.pcall('GET', KEYS[2])
if type(held) == 'table' and held['err'] then
  redis.call('DEL', KEYS[2])   -- foreign data under our lease's name
  held = false
end
if held and string.find(held, '@' .. generation, 1, true) then
  -- Someone else is loading this key: mark the lease contended (one mark per
  -- waiting caller), so its end is announced and this caller can wait for it
  -- instead of loading too.
  redis.call('APPEND', KEYS[2], '+')
  return {0}
end
local waiters = (held and string.sub(held, -1) == '+') and '+' or ''
redis.call('SET', KEYS[2], ARGV[1] .. waiters, 'PX', ARGV[2])
return {1}
