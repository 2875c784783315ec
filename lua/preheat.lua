--[[
  preheat.lua: load an event's sale into Redis (a rebuild from Postgres truth
  is rebuild.lua).

  Only when the event is not in Redis yet: sets the sale parameters, the
  full stock and the counters `held` and `pending` (see prelude.lua). When
  the event is already loaded it changes nothing and answers 0, so
  preheating twice is harmless.

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought  KEYS[4] orders  KEYS[5] ledger

  ARGV[1] price  ARGV[2] limit  ARGV[3] starts_ms  ARGV[4] ends_ms  ARGV[5] total
  ARGV[6] paused ("1" or "0")

  Returns: 1 loaded, 0 already loaded
]]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'price', ARGV[1], 'limit', ARGV[2],
  'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'total', ARGV[5], 'paused', ARGV[6],
  'held', 0, 'pending', 0)
redis.call('SET', KEYS[2], ARGV[5])
redis.call('UNLINK', KEYS[3], KEYS[4])
return 1
