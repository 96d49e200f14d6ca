-- Shared by every twotier script (prepended by _redis.py, after lines that
-- set PUBLISH: 'PUBLISH', or 'SPUBLISH' on a cluster's shard channel, and
-- MEET: whether control scripts meet the server themselves, see meet()). Two
-- families, each touching one hash slot only (guarantee 8):
--   control scripts: the namespace's {ns:v2} keys, always
--                    KEYS = tag-version hash, seq, log, bump times, epoch
--                    ARGV = origin, channel, log maxlen, sent ms, then their own
--   entry scripts:   one entry and its fill lease, which share the key's slot
local SEP = '\31'

local function split(s)
  local out = {}
  for part in string.gmatch(s or '', '[^\31]+') do out[#out + 1] = part end
  return out
end

-- ---------------------------------------------------------------- control slot

-- A new namespace generation: the server clock in microseconds plus a suffix,
-- kept as a string (Lua prints large numbers in exponent form).
local function new_generation(suffix)
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2])) .. '.' .. suffix
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
  local generation = new_generation(seq)
  redis.call('DEL', tags_key, bumped_key)
  redis.call('HSET', tags_key, '', generation)
  return generation
end

-- The generation and the versions of `tags` ('0' for a tag never bumped).
-- A missing hash (a new or emptied server, evicted) or foreign data under its
-- name returns nil: the caller starts a new generation, announced, so losing
-- the versions can never bring an invalidated entry back.
local function versions_of(tags_key, tags)
  local fields = {''}
  for i = 1, #tags do fields[i + 1] = tags[i] end
  local versions = redis.pcall('HMGET', tags_key, unpack(fields))
  if versions['err'] or not versions[1] then return nil end
  for i = 2, #fields do versions[i] = versions[i] or '0' end
  return versions
end

-- The longest time (ms) an entry stored from now on can still be read, kept in
-- the version hash under a field no tag can have; compaction never drops a
-- tag's version while an entry stored before its last bump may still live.
local HORIZON = '\31horizon'
local function note_horizon(tags_key, horizon_ms)
  local known = tonumber(redis.call('HGET', tags_key, HORIZON) or '0') or 0
  if horizon_ms > known then redis.call('HSET', tags_key, HORIZON, horizon_ms) end
end

-- Append change `seq` to the bounded log and publish it, in the same atomic
-- script as the change itself, so the log never misses a change.
-- `body` is the message's tail: keys, tag/version pairs, or a generation.
-- `written` (optional): where the announced keys' entry changes stand in
-- their shards' replication streams (entry_written below), kept in the log
-- only, for the repair of a shard that lost them.
local function announce(seq, log_key, origin, channel, maxlen, sent_ms, kind, body, written)
  local msg = table.concat({'2', kind, seq, origin, sent_ms, body}, SEP)
  local id = seq .. '-1'
  local fields = {'m', msg}
  if written and written ~= '' then fields = {'m', msg, 'w', written} end
  local ok = redis.pcall('XADD', log_key, 'MAXLEN', '~', maxlen, id, unpack(fields))
  if type(ok) == 'table' and ok['err'] then
    -- The log is ahead of the counter (the counter was lost, e.g. evicted):
    -- start a new log. Readers whose position it no longer covers clear L1.
    redis.call('DEL', log_key)
    redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, id, unpack(fields))
  end
  redis.call(PUBLISH, channel, msg)
  return seq
end

-- This server's run as the holder of the data: its process (run id) and its
-- replication history (master_replid). A restart, a restore, a promoted
-- replica and a failover all show a new run id; a master that was demoted and
-- promoted again — a VM pause outlived by a failover, then the promoted
-- replica lost and the old master taken back (issue 21, case 1) — keeps its
-- run id but takes a new replication id at its promotion, and may have missed
-- changes acknowledged meanwhile elsewhere.
local function run_id()
  local process = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local history = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  return process .. ':' .. (history or '')
end

-- Meet the server before any control change or version read (guarantee 9:
-- nothing comes back). Unless the namespace's generation was drawn on this
-- very server run, its tag versions may be older than the invalidations of the
-- entries it holds (a restore from an older snapshot, a replica promoted before
-- it had every change, the survivor of a split brain): draw a new generation,
-- announced as a clear from 'server', which every instance applies. Checked in
-- the script itself, so it holds whichever connection, node or client meets
-- the new server first. Idempotent: of many instances, one draws.
local function meet_server()
  local id = run_id()
  if redis.pcall('GET', KEYS[5]) == id then return end
  local seq = next_seq(KEYS[2], KEYS[3])
  local generation = new_namespace_generation(KEYS[1], KEYS[4], seq)
  redis.call('SET', KEYS[5], id)
  announce(seq, KEYS[3], 'server', ARGV[2], ARGV[3], ARGV[4], 'c', generation)
end

-- Every control script but server.lua starts here. On a single server or
-- Sentinel, every connection met its server when it opened (RedisTier.prepare
-- runs server.lua first): a TCP connection cannot outlive its server process,
-- so the check would find the same run each time, at a quarter of an
-- invalidation's server time (INFO). A cluster client offers no hook on
-- connect: there each control script meets the server itself (MEET, set
-- like PUBLISH by _redis.py).
local function meet()
  if MEET then meet_server() end
end

-- ---------------------------------------------------------------- entry slot

-- End the fill lease `token` holds on `lease_key`. Returns nil when the lease
-- is no longer that token's (a set/delete removed it, or it expired), else
-- whether it was contended: then the client wakes the waiters with an
-- unnumbered 'f' message (published by the client, on the control slot's
-- channel, so that this script stays on the entry's slot).
local function end_lease(lease_key, token)
  local value = redis.pcall('GET', lease_key)
  if type(value) ~= 'string' or string.sub(value, 1, #token) ~= token then return nil end
  redis.call('DEL', lease_key)
  return string.sub(value, -1) == '+'
end

-- In a cluster, where an entry change stands in its shard master's replication
-- stream: 'replid:offset:bytes' — the master's replication id, its offset
-- before this script's effects (they replicate after it, as one transaction)
-- and a bound on their size. The announcement keeps it in the log; a shard
-- master met later that is a replica promoted without these bytes, or a
-- master restored from before them, lost the change (issue 21, case 2:
-- `_shards.py`). '' elsewhere: one server holds entries and versions, and a
-- new generation covers whatever it lost.
local function entry_written(bytes)
  if not MEET then return '' end
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%x+)')
  local offset = string.match(info, 'master_repl_offset:(%d+)')
  if not (replid and offset) then return '' end
  return replid .. ':' .. offset .. ':' .. (bytes + 512)
end
