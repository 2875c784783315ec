--[[
  rebuild.lua: rebuild an event's Redis state from Postgres truth plus the
  intents still pending in its ledger, in bounded steps (the caller holds the
  event row FOR UPDATE in Postgres from the first step to the last, so no
  writer commits meanwhile).

  From "begin" to "finish" the event is not loaded (no meta): purchases
  answer "not preheated", and every script that settles or takes units
  (ack, release, admit) leaves an unloaded event alone, so nothing
  interleaves with the steps. Each step touches a bounded batch.

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought  KEYS[4] orders  KEYS[5] ledger
  KEYS[6] returned (order_nos of refunds whose units are back)

  ARGV[1] step:
    "begin"   forget the old state (the ledger stays; the meta hash
              goes with the stock adjustments it recorded: the
              rebuilt total counts only those Postgres applied).  Returns 1.
    "buyers"  then groups of 3: user_id, order list, units held
              (the list as Postgres has it, oldest first, failed ones
              marked "!"; units of their non-failed orders).    Returns 1.
    "returned" then order_nos of refunded orders: Postgres has
              them refunded, the buyers step counted them as
              holding nothing, so their units are in the stock
              "finish" sets; they join the `returned` set, so
              refund.lua does not return them again.        Returns 1.
    "ledger"  then groups of 2: order_no, "1" if Postgres has it else "0".
              A persisted one is settled and leaves the ledger; the others
              are pending: their buyer holds their units.
              Returns {intents kept, units kept}.
    "finish"  ARGV[2] price  ARGV[3] limit  ARGV[4] starts_ms  ARGV[5] ends_ms
              ARGV[6] total  ARGV[7] paused ("1" or "0")
              ARGV[8] units of Postgres's non-failed orders
              ARGV[9] units pending in the ledger.
              Loads the sale; refuses (error, nothing written) when more is
              sold than stocked.                                Returns stock_left.

  Uses prelude.lua (entry_user_quantity, listed).
]]
local step = ARGV[1]

if step == 'begin' then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('UNLINK', KEYS[3], KEYS[4])
  return 1
end

if step == 'buyers' then
  if (#ARGV - 1) % 3 ~= 0 then
    return redis.error_reply('ERR buyers takes groups of 3')
  end
  for i = 2, #ARGV, 3 do
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
    if tonumber(ARGV[i + 2]) > 0 then
      redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    end
  end
  return 1
end

if step == 'returned' then
  for i = 2, #ARGV do
    redis.call('SADD', KEYS[6], ARGV[i])
  end
  return 1
end

if step == 'ledger' then
  if (#ARGV - 1) % 2 ~= 0 then
    return redis.error_reply('ERR ledger takes groups of 2')
  end
  local kept, units = 0, 0
  for i = 2, #ARGV, 2 do
    local order_no = ARGV[i]
    local entry = redis.call('HGET', KEYS[5], order_no)
    if entry then
      if ARGV[i + 1] == '1' then
        redis.call('HDEL', KEYS[5], order_no)
      else
        local user, quantity = entry_user_quantity(entry)
        local mine = redis.call('HGET', KEYS[4], user)
        if not listed(mine, order_no) then
          redis.call('HSET', KEYS[4], user, (mine and mine ~= '') and (mine .. ',' .. order_no) or order_no)
        end
        redis.call('HINCRBY', KEYS[3], user, quantity)
        kept = kept + 1
        units = units + quantity
      end
    end
  end
  return {kept, units}
end

if step == 'finish' then
  local total, settled, pending = tonumber(ARGV[6]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local left = total - settled - pending
  if left < 0 then
    return redis.error_reply('ERR orders exceed stock_total; refusing to rebuild')
  end
  redis.call('HSET', KEYS[1], 'price', ARGV[2], 'limit', ARGV[3],
    'starts_ms', ARGV[4], 'ends_ms', ARGV[5], 'total', ARGV[6], 'paused', ARGV[7],
    'held', settled + pending, 'pending', pending)
  redis.call('SET', KEYS[2], left)
  return left
end

return redis.error_reply('ERR step must be begin, buyers, returned, ledger or finish')
