"""The store's Lua scripts: every multi-key update of a job is one script, so it is atomic.

Each script names its KEYS and ARGV in a comment; ``service.state.store.RedisStore`` registers
them and calls them with keys from ``service.state.keys.Keys``.
"""

from __future__ import annotations

from service.state.states import TERMINAL

TERMINAL_CSV = ",".join(sorted(TERMINAL))

# KEYS: jobs, job, manifest, commands, events
# ARGV: job_id, now, max_jobs, events_maxlen, status event JSON, group, field, value, ...
CREATE_JOB = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return {'full'} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
redis.call('HSET', KEYS[3], 'version', 0, 'train_samples', 0, 'val_samples', 0, 'shards', 0,
           'bytes', 0)
redis.call('XGROUP', 'CREATE', KEYS[4], ARGV[6], '0', 'MKSTREAM')
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status', 'time', ARGV[2],
           'data', ARGV[5])
return {'ok'}
"""

# KEYS: job, manifest, shards, manifest log, events, idempotency (or a dummy)
# ARGV: terminal csv, has_idem, fingerprint, ttl, now, events_maxlen, accepted_train,
#       accepted_val, nbytes, shard ids (csv), n, shard JSON x n
APPEND = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == status then return {'terminal', status} end
end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then return {'replay'} end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
local n = tonumber(ARGV[11])
for i = 1, n do
  local js = ARGV[11 + i]
  redis.call('RPUSH', KEYS[3], '{"version":' .. version .. ',' .. string.sub(js, 2))
end
local train = redis.call('HINCRBY', KEYS[2], 'train_samples', ARGV[7])
local val = redis.call('HINCRBY', KEYS[2], 'val_samples', ARGV[8])
local shards = redis.call('HINCRBY', KEYS[2], 'shards', n)
redis.call('HINCRBY', KEYS[2], 'bytes', ARGV[9])
local log_id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'version', version)
redis.call('HSET', KEYS[2], 'log_id', log_id, 'updated', ARGV[5])
local accepted = tonumber(ARGV[7]) + tonumber(ARGV[8])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'type', 'data', 'time', ARGV[5], 'data',
  '{"version":' .. version .. ',"accepted":' .. accepted .. ',"train_samples":' .. train ..
  ',"val_samples":' .. val .. ',"shards":' .. shards .. '}')
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[6], 'fingerprint', ARGV[3], 'version', version, 'accepted', accepted,
    'accepted_train', ARGV[7], 'accepted_val', ARGV[8], 'train_samples', train,
    'val_samples', val, 'shards', shards, 'shard_ids', ARGV[10], 'created', ARGV[5])
  redis.call('EXPIRE', KEYS[6], ARGV[4])
end
return {'ok', version, train, val, shards}
"""

# KEYS: job, events. ARGV: new, reason, now, events_maxlen, allowed sources (csv)
SET_STATUS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing'} end
local reason = redis.call('HGET', KEYS[1], 'reason') or ''
if current == ARGV[1] and reason == ARGV[2] then return {'same', current} end
local allowed = false
for s in string.gmatch(ARGV[5], '[^,]+') do
  if s == current then allowed = true end
end
if not allowed then return {'refused', current} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reason', ARGV[2], 'updated', ARGV[3])
local event_reason = cjson.null
if ARGV[2] ~= '' then event_reason = ARGV[2] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status', 'time', ARGV[3],
  'data', cjson.encode({status = ARGV[1], previous = current, reason = event_reason}))
return {'ok', current}
"""

# KEYS: job, commands, command, events
# ARGV: terminal csv, command_id, kind, args JSON, now, commands_maxlen, events_maxlen, event JSON
ENQUEUE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == status then return {'terminal', status} end
end
local sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'command_id', ARGV[2],
  'kind', ARGV[3], 'args', ARGV[4])
redis.call('HSET', KEYS[3], 'id', ARGV[2], 'kind', ARGV[3], 'args', ARGV[4], 'status', 'queued',
  'detail', '', 'result', '', 'created', ARGV[5], 'updated', ARGV[5], 'stream_id', sid)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'type', 'command', 'time', ARGV[5],
  'data', ARGV[8])
return {'ok', sid}
"""

# KEYS: command, commands, events
# ARGV: status, detail, result JSON, now, final ('1'/'0'), group, ttl, events_maxlen
UPDATE_COMMAND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local previous = redis.call('HGET', KEYS[1], 'status')
if previous == 'done' or previous == 'rejected' or previous == 'failed' then
  return {'final', previous}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'detail', ARGV[2], 'result', ARGV[3],
  'updated', ARGV[4])
local detail = cjson.null
if ARGV[2] ~= '' then detail = ARGV[2] end
local fields = redis.call('HMGET', KEYS[1], 'id', 'kind', 'stream_id')
if ARGV[5] == '1' then
  redis.call('XACK', KEYS[2], ARGV[6], fields[3])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'type', 'command', 'time', ARGV[4],
  'data', cjson.encode({command_id = fields[1], kind = fields[2], status = ARGV[1],
                        detail = detail}))
return {'ok', previous}
"""

# KEYS: lease. ARGV: owner, ttl_ms
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: jobs, job, lease, MLflow outbox, deleting. ARGV: job_id, terminal csv, force
# The job leaves the listing and its hash goes, in one step; its other keys and its files are
# removed afterwards (RedisStore.purge_job), with the id kept in the 'deleting' set until then.
DELETE_JOB = """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return {'missing'} end
local terminal = false
for s in string.gmatch(ARGV[2], '[^,]+') do
  if s == status then terminal = true end
end
if not terminal then return {'active', status} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'leased', status} end
local pending = redis.call('LLEN', KEYS[4])
if pending > 0 and ARGV[3] ~= '1' then return {'tracking', status, pending} end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SADD', KEYS[5], ARGV[1])
return {'ok', status}
"""
