--[[
  cap.lua: lower an event's stock to at most what Postgres has not sold.

  A writer found that Redis accepted more than the unsold stock (a Redis back
  from an older state counts units Postgres sold since). The unsold count is
  an upper bound on the true stock left, so capping at it never takes a real
  unit off sale, and it stops the phantom ones from being sold again. The
  reconciler repairs the rest of the drift (buyer counts) once the sale is
  still.

  KEYS[1] stock   string units left
  ARGV[1] cap     units Postgres has not sold

  Returns: the stock after the call (-1 when the event is not loaded).
]]
local cap = tonumber(ARGV[1])
if not cap or cap < 0 then
  return redis.error_reply('ERR cap must be a non-negative integer')
end
local stock = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stock > cap then
  redis.call('SET', KEYS[1], cap)
  return cap
end
return stock
