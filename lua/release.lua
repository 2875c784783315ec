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

  KEYS[1] meta     hash   counters `held`, `pending`
  KEYS[2] stock    string units left
  KEYS[3] bought   hash   user_id -> units held by non-failed orders
  KEYS[4] orders   hash   user_id -> comma-separated order_nos
  KEYS[5] ledger   hash   order_no -> "user_id:quantity:amount:accepted_ms"

  ARGV[1] how many failed order_nos to keep per shopper (the newest)
  ARGV[2] "restock" | "discard"
  ARGV[3..] order_no...

  Returns: units settled by this call (0 when every order was already
  released or acked, or the event is not loaded: being rebuilt, and the
  rebuild settles them); with "restock", the units put back on sale.

  A shopper's list keeps at most ARGV[1] failed order_nos, so its length
  (and every script's work on it) stays within per_user_limit + ARGV[1].
  They let a re-sent purchase of a failed order answer "already accepted";
  one older than the kept ones would take stock again, and its writer would
  find the order failed in Postgres and release it: never a second charge.

  Uses prelude.lua (unpend, add_held, mark_failed).
]]
local KEEP_FAILED = tonumber(ARGV[1])
local restock = ARGV[2] == 'restock'
if not KEEP_FAILED or (ARGV[2] ~= 'restock' and ARGV[2] ~= 'discard') then
  return redis.error_reply('ERR usage: keep_failed restock|discard order_no...')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local returned = 0
for i = 3, #ARGV do
  local order_no = ARGV[i]
  local user, quantity = unpend(KEYS[1], KEYS[5], order_no)
  if user then
    if restock then
      redis.call('INCRBY', KEYS[2], quantity)
    end
    add_held(KEYS[1], KEYS[3], user, -quantity)
    mark_failed(KEYS[4], user, order_no, KEEP_FAILED)
    returned = returned + quantity
  end
end
return returned
