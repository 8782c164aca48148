-- Multi-limit GCRA on the server's clock, in microseconds (Lua numbers are
-- doubles: exact to 2^53, which microseconds since 1970 stay well under).
--
-- KEYS[1]  the key's state: a hash with the limits' fingerprint "fp" and a
--          TAT per limit, "t1".."tN".
-- ARGV[1]  the fingerprint of the limits; a different one starts afresh.
-- ARGV[2]  N, the number of limits.
-- ARGV[3..] per limit: the emission interval, then the tolerance (burst ×
--          interval), in microseconds.
--
-- Returns { admitted (1 or 0), wait, refusing limit (0-based, -1 if none),
--           then per limit how far its TAT runs ahead of now }, in
--           microseconds. A request is charged only when every limit admits.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local n = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'fp', 't1', 't2', 't3', 't4')
local same = state[1] == ARGV[1]

local tats, next_tats = {}, {}
local wait, refused = 0, -1
for i = 1, n do
  local interval = tonumber(ARGV[1 + 2 * i])
  local tolerance = tonumber(ARGV[2 + 2 * i])
  local tat = now
  if same and state[i + 1] then
    tat = math.max(tonumber(state[i + 1]), now)
  end
  tats[i] = tat
  next_tats[i] = tat + interval
  local ahead = next_tats[i] - now
  if ahead > tolerance and ahead - tolerance > wait then
    wait = ahead - tolerance
    refused = i - 1
  end
end

local reply = { 0, wait, refused }
if refused < 0 then
  reply[1] = 1
  local fields = { 'fp', ARGV[1] }
  local longest = 0
  for i = 1, n do
    -- '%.0f' keeps every digit; a plain number would be written as 1.7e+15.
    fields[#fields + 1] = 't' .. i
    fields[#fields + 1] = string.format('%.0f', next_tats[i])
    longest = math.max(longest, next_tats[i] - now)
    reply[3 + i] = next_tats[i] - now
  end
  if not same then
    redis.call('DEL', KEYS[1])
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  -- Gone once every limit has refilled: Redis holds only active tenants.
  redis.call('PEXPIRE', KEYS[1], math.floor(longest / 1000) + 1)
else
  for i = 1, n do
    reply[3 + i] = tats[i] - now
  end
end
return reply
