-- Shared by every twotier script (prepended by _redis.py).
-- KEYS[1] is always the tag-version hash; its field '' is the namespace
-- generation, bumped by clear(), so every entry implicitly carries it.
local SEP = '\31'

local function split(s)
  local out = {}
  for part in string.gmatch(s or '', '[^\31]+') do out[#out + 1] = part end
  return out
end

-- A new namespace generation: the server clock in microseconds plus a suffix,
-- kept as a string (Lua prints large numbers in exponent form).
local function new_generation(suffix)
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2])) .. '.' .. suffix
end

-- The current versions of the generation and of `tags`, joined by SEP;
-- a tag never invalidated has version 0. If the hash is missing (a new or an
-- emptied server, or evicted under maxmemory) or holds foreign data, a new
-- generation is drawn: entries stored under the old one can then never match
-- again, so losing the versions cannot bring an invalidated entry back.
local function versions_of(tags)
  local fields = {''}
  for i = 1, #tags do fields[#fields + 1] = tags[i] end
  local versions = redis.pcall('HMGET', KEYS[1], unpack(fields))
  if versions['err'] then
    redis.call('DEL', KEYS[1])
    versions = {}
  end
  if not versions[1] then
    versions[1] = new_generation('0')
    redis.call('HSET', KEYS[1], '', versions[1])
  end
  for i = 2, #fields do versions[i] = versions[i] or '0' end
  return table.concat(versions, SEP)
end

-- The next change number. It is taken before anything changes, and it never
-- repeats a number the log still holds: a counter lost to eviction or
-- overwritten by foreign data continues after the log's last change, so no
-- listener can mistake a new change for one it has applied (issue 7, item 5).
-- Any other failure (OOM, READONLY) is raised: the change is then not done,
-- and the client keeps it queued.
local function next_seq(seq_key, log_key)
  local seq = redis.pcall('INCR', seq_key)
  if type(seq) == 'table' and seq['err'] then
    local err = seq['err']
    if not (string.find(err, 'WRONGTYPE', 1, true) or string.find(err, 'not an integer', 1, true)) then
      error(seq)
    end
    redis.call('DEL', seq_key)   -- foreign data under our counter
    seq = redis.call('INCR', seq_key)
  end
  if seq == 1 then
    local last = redis.pcall('XREVRANGE', log_key, '+', '-', 'COUNT', 1)
    if type(last) == 'table' and not last['err'] and last[1] then
      local logged = tonumber(string.match(last[1][1], '^(%d+)')) or 0
      if logged >= seq then
        seq = logged + 1
        redis.call('SET', seq_key, seq)
      end
    end
  end
  return seq
end

-- Start a new namespace generation: every entry stored so far becomes invalid,
-- so every tag version can go too (clear(), and a server that lost or may have
-- lost changes). The recorded entry horizon goes with them: entries stored
-- under the old generation no longer need it.
local function new_namespace_generation(tags_key, bumped_key, seq)
  redis.call('DEL', tags_key, bumped_key)
  redis.call('HSET', tags_key, '', new_generation(seq))
end

-- The longest time (ms) an entry stored now can still be read, lease included,
-- kept in the version hash under a field no tag can have; compaction never drops a
-- tag's version while an entry stored before its last bump may still live.
local HORIZON = '\31horizon'
local function note_horizon(tags_key, horizon_ms)
  local known = tonumber(redis.call('HGET', tags_key, HORIZON) or '0') or 0
  if horizon_ms > known then redis.call('HSET', tags_key, HORIZON, horizon_ms) end
end

-- Append change `seq` to the bounded log and publish it, in the same atomic
-- script as the change itself, so the log never misses a change.
local function announce(seq, log_key, origin, channel, maxlen, kind, body)
  local msg = table.concat({'1', kind, seq, origin, body}, SEP)
  local id = seq .. '-1'
  local ok = redis.pcall('XADD', log_key, 'MAXLEN', '~', maxlen, id, 'm', msg)
  if type(ok) == 'table' and ok['err'] then
    -- The log is ahead of the counter (the counter was lost, e.g. evicted):
    -- start a new log. Readers whose position it no longer covers clear L1.
    redis.call('DEL', log_key)
    redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, id, 'm', msg)
  end
  redis.call('PUBLISH', channel, msg)
  return seq
end

-- End the fill lease `token` holds on `lease_key`. Returns nil when the lease
-- is no longer that token's (a set/delete removed it, or it expired), else
-- whether it was contended. Waiters of a contended lease get an unnumbered
-- 'f' (filled) message: it changes nothing, it only wakes them.
local function end_lease(lease_key, token, channel, origin, key)
  local value = redis.call('GET', lease_key)
  if not value or string.sub(value, 1, #token) ~= token then return nil end
  redis.call('DEL', lease_key)
  if string.sub(value, -1) == '+' then
    redis.call('PUBLISH', channel, table.concat({'1', 'f', '0', origin, key}, SEP))
    return true
  end
  return false
end

-- An L2 read: the entry if its versions are current (and, for an early
-- refresh, it lives at least `min_ttl_ms` more), else a version snapshot of
-- `wanted` for the loader and, when `token` is not '', the fill lease.
-- Returns {1, payload, pttl, tags} | {0, has_lease, snapshot} | {-1} (garbage, deleted)
local function read_one(entry_key, lease_key, token, lease_ms, wanted, min_ttl_ms, no_snapshot)
  local entry = redis.pcall('HMGET', entry_key, 'p', 't', 'v')
  if entry['err'] or (entry[1] and not entry[3]) then
    redis.call('DEL', entry_key)   -- not one of our entries: foreign data under our prefix
    return {-1}
  end
  if entry[1] then
    local tags = entry[2] or ''
    if versions_of(split(tags)) == entry[3] then
      local pttl = redis.call('PTTL', entry_key)
      if pttl >= min_ttl_ms or pttl < 0 then
        return {1, entry[1], pttl, tags}
      end
      -- else: the very entry an early refresh wants to replace; read as a miss
    else
      redis.call('DEL', entry_key)   -- outdated by a tag bump or clear: free it now
    end
  end
  local lease = 0
  if token ~= '' then
    -- A lease is `token@generation` ('+' appended once contended). A lease of
    -- an older generation was taken before a clear() or on an earlier server
    -- run: its fill will be refused, and one that a snapshot restore brought
    -- back has no holder at all. It is taken over, not waited on.
    local generation = versions_of({})
    local mine = token .. '@' .. generation
    local held = redis.pcall('GET', lease_key)
    if type(held) == 'table' and held['err'] then
      redis.call('DEL', lease_key)   -- foreign data under our lease's name
      held = false
    end
    if held and string.find(held, '@' .. generation, 1, true) then
      -- Someone else is loading this key: mark the lease contended, so its end
      -- is announced and this caller can wait for it instead of loading too.
      redis.call('APPEND', lease_key, '+')
    else
      local waiters = (held and string.sub(held, -1) == '+') and '+' or ''
      redis.call('SET', lease_key, mine .. waiters, 'PX', lease_ms)
      lease = 1
      -- A fill may come up to lease_ms after this snapshot: compaction must
      -- not drop a version that recent, whatever other instances' leases are.
      note_horizon(KEYS[1], tonumber(lease_ms))
    end
  end
  if no_snapshot then return {0, lease} end  -- a batch takes one snapshot for all
  return {0, lease, versions_of(wanted)}
end

-- The conditional write of a loaded value (the no-stale-set guard): refused
-- when the lease is no longer `token`'s (a delete or set of the key happened)
-- or any version moved since `snapshot` (a tag invalidation or clear). Either
-- way the lease ends; if others are waiting on it, they are told.
local function fill_one(entry_key, lease_key, token, ttl_ms, payload, tags, snapshot,
                        channel, origin, key, current, horizon_ms)
  -- `current`: the versions now, when the caller (a batch) has read them already
  if end_lease(lease_key, token, channel, origin, key) == nil
      or (current or versions_of(split(tags))) ~= snapshot then
    return 0
  end
  note_horizon(KEYS[1], tonumber(horizon_ms))
  redis.call('DEL', entry_key)
  redis.call('HSET', entry_key, 'p', payload, 't', tags, 'v', snapshot)
  redis.call('PEXPIRE', entry_key, ttl_ms)
  return 1
end
