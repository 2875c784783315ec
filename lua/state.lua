--[[
  state.lua: an event's sale state in O(1), whatever its size: the stock and
  the counters the scripts keep in the same steps that move units.

  KEYS[1] meta    hash   total, held, pending, and the transfer counters
                         of transfer.lua
  KEYS[2] stock   string units left
  KEYS[3] ledger  hash   pending intents

  Returns: {now_ms, loaded (1|0), stock_left ("" when absent), total,
            held (-1 when the counters are missing), pending units,
            pending intents, in_flight, moved_in, moved_out, transfer_seq}

  Uses prelude.lua (now_ms, LEDGER_PIN: not an intent).
]]
local meta = redis.call('HMGET', KEYS[1], 'total', 'held', 'pending',
  'in_flight', 'moved_in', 'moved_out', 'transfer_seq')
local loaded = meta[1] and 1 or 0
return {
  now_ms(), loaded, redis.call('GET', KEYS[2]) or '',
  tonumber(meta[1] or '0'), tonumber(meta[2] or '-1'), tonumber(meta[3] or '0'),
  redis.call('HLEN', KEYS[3]) - redis.call('HEXISTS', KEYS[3], LEDGER_PIN),
  tonumber(meta[4] or '0'), tonumber(meta[5] or '0'), tonumber(meta[6] or '0'),
  tonumber(meta[7] or '0'),
}
