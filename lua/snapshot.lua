--[[
  snapshot.lua: one consistent read of an event's sale state, with the Redis
  server time it was taken at (no purchase interleaves with it).

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought  KEYS[4] ledger

  Returns: {now_ms, loaded (1|0), stock_left ("" when absent),
            {user_id, units, ...}, {order_no, entry, ...}}

  Uses prelude.lua (now_ms).
]]
local loaded = redis.call('EXISTS', KEYS[1])
local stock = redis.call('GET', KEYS[2]) or ''
return {now_ms(), loaded, stock, redis.call('HGETALL', KEYS[3]), redis.call('HGETALL', KEYS[4])}
