-- Shared by every twotier script (prepended by _redis.py).
-- KEYS[1] is always the tag-version hash; its field '' is the namespace
-- generation, bumped by clear(), so every entry implicitly carries it.
local SEP = '\31'

local function split(s)
  local out = {}
  for part in string.gmatch(s or '', '[^\31]+') do out[#out + 1] = part end
  return out
end

-- The current versions of the generation and of `tags`, joined by SEP;
-- a tag never invalidated has version 0.
local function versions_of(tags)
  local fields = {''}
  for i = 1, #tags do fields[#fields + 1] = tags[i] end
  local versions = redis.call('HMGET', KEYS[1], unpack(fields))
  for i = 1, #versions do versions[i] = versions[i] or '0' end
  return table.concat(versions, SEP)
end

-- Number the change, append it to the bounded log and publish it, all in the
-- same atomic script as the change itself, so the log never misses a change.
local function announce(seq_key, log_key, origin, channel, maxlen, kind, body)
  local seq = redis.call('INCR', seq_key)
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
