--[[
  buyers.lua: some shoppers' units and pending intents at one instant, for a
  comparison with Postgres that stays exact while the sale runs (every
  order these shoppers have is either settled in Postgres or pending here).
  The caller passes a bounded batch, so the step stays short whatever the
  size of the sale.

  KEYS[1] bought   hash   user_id -> units held by non-failed orders
  KEYS[2] orders   hash   user_id -> comma-separated order_nos ("!" = failed)
  KEYS[3] ledger   hash   pending intents

  ARGV    user_id...

  Returns: {now_ms, {user_id, held, {order_no, quantity, ...}}, ...}
    one group per user: their held units and their intents still pending

  Uses prelude.lua (now_ms, entry_user_quantity).
]]
local out = {now_ms()}
for i = 1, #ARGV do
  local user = ARGV[i]
  local held = tonumber(redis.call('HGET', KEYS[1], user) or '0')
  local pending = {}
  local mine = redis.call('HGET', KEYS[2], user)
  if mine then
    for item in string.gmatch(mine, '[^,]+') do
      if string.sub(item, -1) ~= '!' then
        local entry = redis.call('HGET', KEYS[3], item)
        if entry then
          local _, quantity = entry_user_quantity(entry)
          pending[#pending + 1] = item
          pending[#pending + 1] = quantity
        end
      end
    end
  end
  out[#out + 1] = {user, held, pending}
end
return out
