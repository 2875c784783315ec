--[[
  adjust.lua: apply an operator's stock adjustment once, atomically against
  every purchase: add units, or withdraw unsold ones (never more than the
  stock left, so never below what buyers hold). The caller holds the event
  row FOR UPDATE in Postgres (the fence of src/loading.rs) and records the
  outcome in `stock_adjustments` and `events.stock_total` before it commits.

  The outcome is remembered in the meta hash under "adjusted:<id>", so a
  replay (the reconciler finishing an adjustment a crash left pending in
  Postgres) answers the same and moves nothing twice. A rebuild drops the
  meta hash with these marks and loads the total Postgres applied, so a
  pending adjustment is then applied to the rebuilt sale, once.

  The `held` and `pending` counters do not move: an adjustment changes the
  total and the stock left by the same delta.

  KEYS[1] meta   hash   total, adjusted:<id>, ...
  KEYS[2] stock  string units left

  ARGV[1] adjustment id   ARGV[2] delta (a non-zero integer)

  Returns:
    {0}                       the event is not loaded: nothing written
    {1, stock_left, total}    applied now
    {2, stock_left, total}    applied before (replay)
    {3, stock_left}           refused now: withdraws more than the stock left
    {4, stock_left}           refused before (replay)
]]
local mark = 'adjusted:' .. ARGV[1]
local delta = tonumber(ARGV[2])
if not delta or delta == 0 or delta ~= math.floor(delta) then
  return redis.error_reply('ERR delta must be a non-zero integer')
end
local meta = redis.call('HMGET', KEYS[1], 'total', mark)
if not meta[1] then
  return {0}
end
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if meta[2] == 'applied' then
  return {2, stock, tonumber(meta[1])}
end
if meta[2] == 'refused' then
  return {4, stock}
end
if delta < 0 and stock < -delta then
  redis.call('HSET', KEYS[1], mark, 'refused')
  return {3, stock}
end
-- Checked; the writes start here.
redis.call('INCRBY', KEYS[2], delta)
local total = redis.call('HINCRBY', KEYS[1], 'total', delta)
redis.call('HSET', KEYS[1], mark, 'applied')
return {1, stock + delta, total}
