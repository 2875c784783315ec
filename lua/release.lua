--[[
  release.lua: settle failed orders in Redis, exactly once each.

  An order is settled only while its intent is still pending in the ledger;
  the same call removes the intent, so a second call (writer retry,
  reconciler replay) finds nothing and changes nothing. The shopper's units
  and allowance come back, the order is marked failed in their list, and:
    restock   the units go back on sale (the shopper could not pay);
    discard   they do not: the units never existed (a Redis back from an
              older state sold stock Postgres had already sold), so putting
              them back would sell them again, and fail again, forever.

  KEYS[1] stock    string units left
  KEYS[2] bought   hash   user_id -> units held by non-failed orders
  KEYS[3] orders   hash   user_id -> comma-separated order_nos
  KEYS[4] ledger   hash   order_no -> "user_id:quantity:amount:accepted_ms"

  ARGV[1] how many failed order_nos to keep per shopper (the newest)
  ARGV[2] "restock" | "discard"
  ARGV[3..] order_no...

  Returns: units settled by this call (0 when every order was already
  released or acked); with "restock", the units put back on sale.

  A shopper's list keeps at most ARGV[1] failed order_nos, so its length
  (and every script's work on it) stays within per_user_limit + ARGV[1].
  They let a re-sent purchase of a failed order answer "already accepted";
  one older than the kept ones would take stock again, and its writer would
  find the order failed in Postgres and release it: never a second charge.

  Uses prelude.lua (entry_user_quantity).
]]
local KEEP_FAILED = tonumber(ARGV[1])
local restock = ARGV[2] == 'restock'
if not KEEP_FAILED or (ARGV[2] ~= 'restock' and ARGV[2] ~= 'discard') then
  return redis.error_reply('ERR usage: keep_failed restock|discard order_no...')
end
local returned = 0
for i = 3, #ARGV do
  local order_no = ARGV[i]
  local entry = redis.call('HGET', KEYS[4], order_no)
  if entry then
    local user, quantity = entry_user_quantity(entry)
    redis.call('HDEL', KEYS[4], order_no)
    if restock then
      redis.call('INCRBY', KEYS[1], quantity)
    end
    local held = redis.call('HINCRBY', KEYS[2], user, -quantity)
    if held <= 0 then
      redis.call('HDEL', KEYS[2], user)
    end
    local mine = redis.call('HGET', KEYS[3], user)
    if mine then
      -- Mark it failed in the buyer's list (plain comparison: order_nos hold
      -- '-', a Lua pattern character), and keep only the newest failed ones:
      -- a shopper who cannot pay must not grow the list, or this script's
      -- work, without bound.
      local items = {}
      local failed = 0
      for item in string.gmatch(mine, '[^,]+') do
        if item == order_no then
          item = item .. '!'
        end
        if string.sub(item, -1) == '!' then
          failed = failed + 1
        end
        items[#items + 1] = item
      end
      local drop = failed - KEEP_FAILED
      local kept = {}
      for _, item in ipairs(items) do
        if drop > 0 and string.sub(item, -1) == '!' then
          drop = drop - 1
        else
          kept[#kept + 1] = item
        end
      end
      redis.call('HSET', KEYS[3], user, table.concat(kept, ','))
    end
    returned = returned + quantity
  end
end
return returned
