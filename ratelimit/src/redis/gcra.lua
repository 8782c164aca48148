-- Multi-limit GCRA over one or more keys on the server's clock, in
-- microseconds (Lua numbers are doubles: exact to 2^53, which microseconds
-- since 1970 stay well under).
--
-- KEYS     the states a request is charged to: the tenant's plan state, and
--          for a request of a route class its plan limits, the class state.
--          Each is a hash with its limits' fingerprint "fp" and a TAT per
--          limit, "t1".."t4".
-- ARGV[1]  the request's cost in units: each limit's TAT advances by
--          cost × interval.
-- then per key, in KEYS order: the fingerprint of its limits (a different
--          one starts afresh), N, its number of limits, and per limit the
--          emission interval and the tolerance (burst × interval), in
--          microseconds.
--
-- Returns { admitted (1 or 0), wait, refusing limit (0-based over every
-- key's limits in order, -1 if none), then per limit how far its TAT runs
-- ahead of now }, in microseconds. A request is charged only when every
-- limit of every key admits.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local cost = tonumber(ARGV[1])

local keys = {}
local tats, next_tats = {}, {}
local wait, refused = 0, -1
local arg = 2
for k = 1, #KEYS do
  local fp = ARGV[arg]
  local n = tonumber(ARGV[arg + 1])
  arg = arg + 2
  local state = redis.call('HMGET', KEYS[k], 'fp', 't1', 't2', 't3', 't4')
  local same = state[1] == fp
  keys[k] = { fp = fp, same = same, first = #tats + 1, n = n }
  for i = 1, n do
    local interval = tonumber(ARGV[arg])
    local tolerance = tonumber(ARGV[arg + 1])
    arg = arg + 2
    local tat = now
    if same and state[i + 1] then
      tat = math.max(tonumber(state[i + 1]), now)
    end
    local at = #tats + 1
    tats[at] = tat
    next_tats[at] = tat + interval * cost
    local ahead = next_tats[at] - now
    if ahead > tolerance and ahead - tolerance > wait then
      wait = ahead - tolerance
      refused = at - 1
    end
  end
end

local reply = { 0, wait, refused }
if refused < 0 then
  reply[1] = 1
  for k = 1, #KEYS do
    local key = keys[k]
    local fields = { 'fp', key.fp }
    local longest = 0
    for i = 1, key.n do
      local at = key.first + i - 1
      -- '%.0f' keeps every digit; a plain number would be written as 1.7e+15.
      fields[#fields + 1] = 't' .. i
      fields[#fields + 1] = string.format('%.0f', next_tats[at])
      longest = math.max(longest, next_tats[at] - now)
      reply[3 + at] = next_tats[at] - now
    end
    if not key.same then
      redis.call('DEL', KEYS[k])
    end
    redis.call('HSET', KEYS[k], unpack(fields))
    -- Gone once every limit has refilled: Redis holds only active tenants.
    redis.call('PEXPIRE', KEYS[k], math.floor(longest / 1000) + 1)
  end
else
  for at = 1, #tats do
    reply[3 + at] = tats[at] - now
  end
end
return reply
