"""The Lua scripts of the Redis store: each one step that must be atomic across replicas.

Keys are built from the prefix (ARGV[1]) inside the scripts where the target of a job is only
known from Redis, so the store runs on one Redis (standalone or Sentinel), not Redis Cluster.
Layout under `<cluster>:` (see the package docstring for what each holds):
    seq  spool  spool:att  spool:target  spool:by  spool:order  spool:t:<target>  spool:targets
    spool:gone  spool:late  spool:refused
    dead  dead:order  throttle  throttle:until  marks  dedupe  limit:<key>  lease:<name>
"""

from __future__ import annotations

# Remove job ARGV[2] from the spool (its hashes, the global and the per-target order). 1 if it was there.
_UNSPOOL = """
local p, id = ARGV[1], ARGV[2]
local target = redis.call('HGET', p .. 'spool:target', id)
if not target then return 0 end
redis.call('HDEL', p .. 'spool', id)
redis.call('HDEL', p .. 'spool:att', id)
redis.call('HDEL', p .. 'spool:target', id)
redis.call('HDEL', p .. 'spool:by', id)
redis.call('ZREM', p .. 'spool:order', id)
local tq = p .. 'spool:t:' .. target
redis.call('ZREM', tq, id)
if redis.call('ZCARD', tq) == 0 then redis.call('SREM', p .. 'spool:targets', target) end
return 1
"""

# Append job ARGV[2] (target ARGV[3], data ARGV[4], attempts ARGV[5]) at the end of the spool.
_SPOOL = """
local p, id, target = ARGV[1], ARGV[2], ARGV[3]
local seq = redis.call('INCR', p .. 'seq')
redis.call('HSET', p .. 'spool', id, ARGV[4])
redis.call('HSET', p .. 'spool:att', id, ARGV[5])
redis.call('HSET', p .. 'spool:target', id, target)
redis.call('ZADD', p .. 'spool:order', seq, id)
redis.call('ZADD', p .. 'spool:t:' .. target, seq, id)
redis.call('SADD', p .. 'spool:targets', target)
if ARGV[6] then redis.call('HSET', p .. 'spool:by', id, ARGV[6]) end
"""

#: how long a finished job's id is remembered (`spool:gone`), so that it is not accepted again:
#: an add retried after a write no replica confirmed (the job meanwhile delivered and
#: finished), the same event run by both sides of a split brain
GONE_SECONDS = 600

# Accept job ARGV[2] unless spooled; ARGV[6] names this call, so a repeat of the same call
# (a retry after a lost answer) hears that it was accepted. 2: finished lately.
# ARGV[7], ARGV[8] (a replica's job): the lease key and the holder's prefix (`<replica>:`);
# if another replica holds that lease now, 3 and nothing written: a replica cut off from Redis
# while it held the stream must not add its jobs behind the ones its successor accepted since
# (they would go out of order). Free, or this replica's (again): accepted, in order.
# ARGV[9] a number: the fencing token of this replica's last tenure of the lease; another
# replica's holding with a smaller token is not a newer holder but an older one that a failover
# brought back (the writes after it, this replica's take among them, lost with the old
# primary): nothing newer can be ahead of the job, accepted as if the lease were free.
# ARGV[9] 'any' (a stream this replica handed over on purpose): accepted whoever holds the
# lease; if another replica does, the job is late (older than what the holder accepts now) and
# `spool:late` names it for the holder's lease and target. The holder's own accept that finds
# such a late job still spooled answers 4 (accepted, behind it): it goes through the spool,
# after the late job, rather than at once.
# A call refused (3) is remembered GONE_SECONDS in `spool:refused`, and every copy of it that
# lands later is refused too: a try whose answer was lost (a socket timeout in a partition)
# stays in its connection's send queue, and the kernel sends it again when the partition
# heals, after the call's next try was refused (main 7bc92d3, 10 minutes, t+559.7 to t+572.8:
# r1's accept of a job its engine then dropped ran 4.9 s after that refusal, once r1 held the
# lease again, and the job went out after newer ones).
SPOOL_ADD = f"""
local p, id, target = ARGV[1], ARGV[2], ARGV[3]
if ARGV[6] and redis.call('ZSCORE', p .. 'spool:refused', ARGV[6]) then return 3 end
if redis.call('HEXISTS', p .. 'spool', id) == 1 then
  if redis.call('HGET', p .. 'spool:by', id) == ARGV[6] then return 1 end
  return 0
end
if redis.call('ZSCORE', p .. 'spool:gone', id) then return 2 end
local late, behind = nil, false
if ARGV[7] then
  local holder = redis.call('GET', ARGV[7])
  local other = holder and string.sub(holder, 1, string.len(ARGV[8])) ~= ARGV[8]
  local mine = tonumber(ARGV[9] or '')
  if other and mine then
    local held = tonumber(string.match(holder, ':(%d+)$') or '')
    if held and held < mine then other = false end
  end
  late = ARGV[7] .. '|' .. target
  if other and ARGV[9] ~= 'any' then
    if ARGV[6] then
      local now = tonumber(redis.call('TIME')[1])
      redis.call('ZADD', p .. 'spool:refused', now, ARGV[6])
      redis.call('ZREMRANGEBYSCORE', p .. 'spool:refused', '-inf', now - {GONE_SECONDS})
      redis.call('EXPIRE', p .. 'spool:refused', {GONE_SECONDS})
    end
    return 3
  end
  if other then
    redis.call('HSET', p .. 'spool:late', late, id)
  else
    local older = redis.call('HGET', p .. 'spool:late', late)
    if older and redis.call('HEXISTS', p .. 'spool', older) == 1 then
      behind = true
    elseif older then
      redis.call('HDEL', p .. 'spool:late', late)
    end
  end
end
""" + _SPOOL + "if behind then return 4 end\nreturn 1\n"

# Finish job ARGV[2]: out of the spool, its id remembered GONE_SECONDS in `spool:gone` (older
# ids forgotten in the same step). 1 if it was there.
SPOOL_DONE = "local function unspool()\n" + _UNSPOOL + "end\n" + f"""
if unspool() == 0 then return 0 end
local now = tonumber(redis.call('TIME')[1])
local gone = ARGV[1] .. 'spool:gone'
redis.call('ZADD', gone, now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', gone, '-inf', now - {GONE_SECONDS})
return 1
"""

# Save attempts ARGV[3] and, if given, data ARGV[4] of a job still spooled.
SPOOL_UPDATE = """
local p, id = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. 'spool', id) == 0 then return 0 end
redis.call('HSET', p .. 'spool:att', id, ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', p .. 'spool', id, ARGV[4]) end
return 1
"""

# Dead-letter job ARGV[2] with record ARGV[3] (replacing an earlier letter: it goes last).
DEADLETTER_ADD = "local function unspool()\n" + _UNSPOOL + "end\n" + """
local p, id = ARGV[1], ARGV[2]
unspool()
redis.call('HSET', p .. 'dead', id, ARGV[3])
redis.call('ZADD', p .. 'dead:order', redis.call('INCR', p .. 'seq'), id)
return 1
"""

# Move dead letter ARGV[2] back to the spool as job data ARGV[4] (target ARGV[3]), if it is
# still a dead letter (another process may have taken it); ARGV[5] is '0'. 1 if moved.
DEADLETTER_TAKE = "local function unspool()\n" + _UNSPOOL + "end\n" + """
local p, id = ARGV[1], ARGV[2]
if redis.call('HDEL', p .. 'dead', id) == 0 then return 0 end
redis.call('ZREM', p .. 'dead:order', id)
unspool()
""" + _SPOOL + "return 1\n"

# Throttle key ARGV[2]: acquire at ARGV[4] unless acquired less than ARGV[3] s before. The
# value is "<time>|<call>": a repeat of call ARGV[6] (redis-py retrying after a lost answer)
# hears "acquired", and so does a later call at the same time when ARGV[5] == '1' (the
# engine's retry of a call whose answer was lost). Prunes up to 50 expired keys per call.
THROTTLE_ACQUIRE = """
local p, key = ARGV[1], ARGV[2]
local window, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = redis.call('HGET', p .. 'throttle', key)
if last then
  local at, by = string.match(last, '^([^|]*)|?(.*)$')
  if by == ARGV[6] or (ARGV[5] == '1' and at == ARGV[4]) then return 1 end
  if now - tonumber(at) < window then return 0 end
end
redis.call('HSET', p .. 'throttle', key, ARGV[4] .. '|' .. ARGV[6])
redis.call('ZADD', p .. 'throttle:until', now + window, key)
local old = redis.call('ZRANGEBYSCORE', p .. 'throttle:until', '-inf', '(' .. ARGV[4], 'LIMIT', 0, 50)
for _, k in ipairs(old) do
  redis.call('HDEL', p .. 'throttle', k)
  redis.call('ZREM', p .. 'throttle:until', k)
end
return 1
"""

# At most ARGV[4] calls per ARGV[5] s on limit key ARGV[2] at ARGV[6]; job ARGV[3] counts once.
LIMIT_ACQUIRE = """
local k = ARGV[1] .. 'limit:' .. ARGV[2]
local per, now = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', k, '-inf', now - per)
if redis.call('ZSCORE', k, ARGV[3]) then return 1 end
if redis.call('ZCARD', k) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', k, now, ARGV[3])
redis.call('PEXPIRE', k, math.ceil(per * 1000) + 1000)
return 1
"""

# Take or renew lease ARGV[2] for owner ARGV[3] for ARGV[4] ms: the fencing token (a number
# that grows with each new holder), or 0 if another owner holds it.
LEASE_ACQUIRE = """
local k = ARGV[1] .. 'lease:' .. ARGV[2]
local holder = redis.call('HGET', k, 'owner')
local token
if holder == ARGV[3] then
  token = redis.call('HGET', k, 'token')
elseif holder then
  return 0
else
  token = redis.call('INCR', ARGV[1] .. 'lease-tokens')
  redis.call('HSET', k, 'owner', ARGV[3], 'token', token)
end
redis.call('PEXPIRE', k, ARGV[4])
return tonumber(token)
"""

# Give lease ARGV[2] up if owner ARGV[3] holds it.
LEASE_RELEASE = """
local k = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('HGET', k, 'owner') == ARGV[3] then return redis.call('DEL', k) end
return 0
"""
