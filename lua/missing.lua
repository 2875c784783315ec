--[[
  missing.lua: which of these intents are no longer pending in the ledger.

  A writer asks this just before persisting a batch. Normally the answer is
  "none" and the batch goes ahead. An intent missing from the ledger was
  either already settled, or lost by a Redis restart (no persistence, or the
  last second of an `appendfsync everysec` AOF); admit.lua decides which.

  KEYS[1] ledger   hash order_no -> intent

  ARGV    order_no...

  Returns: the 1-based positions in ARGV of the order_nos not in the ledger.
]]
local missing = {}
for i = 1, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    missing[#missing + 1] = i
  end
end
return missing
