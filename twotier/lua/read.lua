-- One round trip for an L2 read: the entry if its versions are current, else
-- a version snapshot for the loader and, when asked, the fill lease.
-- KEYS: tag-version hash, entry, lease
-- ARGV: lease token ('' = no lease wanted), lease ttl ms, the caller's tags...
-- Returns {1, payload, pttl, tags} | {0, has_lease, snapshot} | {-1} (garbage, deleted)
local entry = redis.pcall('HMGET', KEYS[2], 'p', 't', 'v')
if type(entry) == 'table' and entry['err'] then
  redis.call('DEL', KEYS[2])   -- not a hash: foreign data under our prefix
  return {-1}
end
if entry[1] then
  if not entry[3] then
    redis.call('DEL', KEYS[2])
    return {-1}
  end
  local tags = entry[2] or ''
  if versions_of(split(tags)) == entry[3] then
    return {1, entry[1], redis.call('PTTL', KEYS[2]), tags}
  end
  redis.call('DEL', KEYS[2])   -- outdated by a tag bump or clear: free it now
end
local wanted = {}
for i = 3, #ARGV do wanted[#wanted + 1] = ARGV[i] end
local lease = 0
if ARGV[1] ~= '' then
  if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
    lease = 1
  else
    -- Someone else is loading this key: mark the lease contended, so its end
    -- is announced and this caller can wait for it instead of loading too.
    redis.call('APPEND', KEYS[3], '+')
  end
end
return {0, lease, versions_of(wanted)}
