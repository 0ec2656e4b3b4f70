"""The Redis state tracker's Lua scripts: every read-modify-write is one of them.

Each runs atomically on the server, so heartbeat, claim, complete, release, remove, enable and clear
are atomic against every other client. The scripts that touch every worker build the worker keys
from the prefix (ARGV), so the tracker wants one Redis server (optionally with replicas), not a
Redis Cluster.

A write whose reply was lost could have been applied already, so the writes that are not idempotent
(enqueue, complete, release, remove, metrics) carry a one-time token: the ``once`` key (KEYS[1]
where present) holds the first answer of the write, so that a retry after a lost reply returns it
instead of applying the write again.
"""

ONCE_TTL_S = 600  # longer than any retry, so a retried write always finds its first answer

_ONCE_HEAD = """
local done = redis.call('GET', KEYS[1])
if done then return done end
"""
_ONCE_TAIL = """
redis.call('SET', KEYS[1], answer, 'EX', ARGV[1])
return answer
"""

# KEYS: once, list; ARGV: ttl, items...
RPUSH_ONCE = _ONCE_HEAD + """
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local answer = 'ok'
""" + _ONCE_TAIL

# KEYS: worker; ARGV: field, value. Only an existing worker: a late call must not resurrect it.
SET_IF_WORKER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: worker, queue. Returns the job held (again) or the one popped, else false.
CLAIM = """
if redis.call('HGET', KEYS[1], 'enabled') ~= '1' then return false end
local held = redis.call('HGET', KEYS[1], 'job')
if held then return held end
local job = redis.call('LPOP', KEYS[2])
if not job then return false end
redis.call('HSET', KEYS[1], 'job', job, 'job_id', cjson.decode(job).id)
return job
"""

# KEYS: worker, queue; ARGV: shard numbers. As CLAIM, but the first pending job whose shard is one
# of ARGV (removed from where it stands: a job's JSON is unique, its id is in it), else false.
CLAIM_SHARD = """
if redis.call('HGET', KEYS[1], 'enabled') ~= '1' then return false end
local held = redis.call('HGET', KEYS[1], 'job')
if held then return held end
local wanted = {}
for i = 1, #ARGV do wanted[ARGV[i]] = true end
for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local job = cjson.decode(item)
  if type(job.shard) == 'number' and wanted[string.format('%d', job.shard)] then
    redis.call('LREM', KEYS[2], 1, item)
    redis.call('HSET', KEYS[1], 'job', item, 'job_id', job.id)
    return item
  end
end
return false
"""

# KEYS: once, worker, ledger, run; ARGV: ttl, job_id, n_samples, loss JSON, now.
COMPLETE = _ONCE_HEAD + """
local answer = '0'
if redis.call('HGET', KEYS[2], 'job_id') == ARGV[2] then
  local job = cjson.decode(redis.call('HGET', KEYS[2], 'job'))
  for p = job.start, job.stop - 1 do redis.call('HINCRBY', KEYS[3], string.format('%d', p), 1) end
  redis.call('HDEL', KEYS[2], 'job', 'job_id')
  redis.call('HINCRBY', KEYS[2], 'jobs_done', 1)
  redis.call('HINCRBY', KEYS[2], 'samples', ARGV[3])
  redis.call('HSET', KEYS[2], 'last_loss', ARGV[4], 'last_heartbeat', ARGV[5])
  redis.call('HINCRBY', KEYS[4], 'batches_run', job.stop - job.start)
  redis.call('HINCRBY', KEYS[4], 'samples_run', ARGV[3])
  answer = '1'
end
""" + _ONCE_TAIL

# Put a held job back at the front with attempt+1 (release, and remove of a worker holding one).
_REQUEUE = """
local answer = ''
local held = redis.call('HGET', KEYS[2], 'job')
if held then
  local job = cjson.decode(held)
  job.attempt = (job.attempt or 0) + 1
  answer = cjson.encode(job)
  redis.call('LPUSH', KEYS[3], answer)
  redis.call('HDEL', KEYS[2], 'job', 'job_id')
end
"""
# KEYS: once, worker, queue; ARGV: ttl.
RELEASE = _ONCE_HEAD + _REQUEUE + _ONCE_TAIL
# KEYS: once, worker, queue, workers; ARGV: ttl, worker id.
REMOVE = _ONCE_HEAD + _REQUEUE + """
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[2])
""" + _ONCE_TAIL

# KEYS[1]: workers; ARGV[1]: worker key prefix. Every worker as {id, {field, value, ...}}.
_READ_WORKERS = """
local workers = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then workers[#workers + 1] = {id, h} end
end
"""
# KEYS: workers; ARGV: worker key prefix. In one read.
ALL_WORKERS = _READ_WORKERS + "return workers\n"

# KEYS: workers, queue, run, metrics; ARGV: worker key prefix, metrics to keep. One consistent read.
SNAPSHOT = _READ_WORKERS + """
local n = tonumber(ARGV[2])
local metrics = {}
if n > 0 then metrics = redis.call('LRANGE', KEYS[4], -n, -1) end
return {workers, redis.call('HGETALL', KEYS[3]), redis.call('LLEN', KEYS[2]), metrics}
"""

# KEYS: workers, queue; ARGV: worker key prefix.
CLEAR_JOBS = """
redis.call('DEL', KEYS[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do redis.call('HDEL', ARGV[1] .. id, 'job', 'job_id') end
return 1
"""
