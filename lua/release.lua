--[[
  release.lua: return the stock of failed orders, exactly once each.

  An order's stock is returned only while its intent is still pending in the
  ledger; the same call removes the intent, so a second call (writer retry,
  reconciler replay) finds nothing and changes nothing.

  KEYS[1] stock    string units left
  KEYS[2] bought   hash   user_id -> units held by non-failed orders
  KEYS[3] orders   hash   user_id -> comma-separated order_nos
  KEYS[4] ledger   hash   order_no -> "user_id:quantity:amount:accepted_ms"

  ARGV    order_no...

  Returns: units returned to stock by this call (0 when every order was
  already released or acked).
]]
local returned = 0
for i = 1, #ARGV do
  local order_no = ARGV[i]
  local entry = redis.call('HGET', KEYS[4], order_no)
  if entry then
    local user, quantity = string.match(entry, '^(%d+):(%d+):')
    quantity = tonumber(quantity)
    redis.call('HDEL', KEYS[4], order_no)
    redis.call('INCRBY', KEYS[1], quantity)
    local held = redis.call('HINCRBY', KEYS[2], user, -quantity)
    if held <= 0 then
      redis.call('HDEL', KEYS[2], user)
    end
    local mine = redis.call('HGET', KEYS[3], user)
    if mine then
      -- Mark it failed in the buyer's list (plain comparison: order_nos hold
      -- '-', a Lua pattern character).
      local items = {}
      for item in string.gmatch(mine, '[^,]+') do
        if item == order_no then
          item = item .. '!'
        end
        items[#items + 1] = item
      end
      redis.call('HSET', KEYS[3], user, table.concat(items, ','))
    end
    returned = returned + quantity
  end
end
return returned
