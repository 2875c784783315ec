--[[
  ack.lua: persisted confirmed orders leave the ledger (and the `pending`
  counter), once each.

  KEYS[1] meta     hash   counter `pending`
  KEYS[2] ledger   hash   order_no -> "user_id:quantity:amount:accepted_ms"

  ARGV    order_no...

  Returns: how many of them were still pending (and are not any more); 0
  for an event that is not loaded (being rebuilt: the rebuild settles them).

  Uses prelude.lua (unpend).
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local acked = 0
for i = 1, #ARGV do
  if unpend(KEYS[1], KEYS[2], ARGV[i]) then
    acked = acked + 1
  end
end
return acked
