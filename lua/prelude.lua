--[[
  prelude.lua: what the sale scripts share, prepended to each script that
  uses it when the engine loads it (what Redis runs is this file followed by
  the script; see src/redis/scripts.rs). Functions only: nothing runs here.

  Ledger entries are "user_id:quantity:amount:accepted_ms"; a shopper's order
  list is comma-separated order_nos, a failed one ending in "!".

  The event's meta hash keeps two counters every script that moves units
  maintains in the same atomic step, so the state of a sale of any size can
  be read in O(1) (state.lua): `held` (the sum of the `bought` hash: units of
  non-failed orders) and `pending` (the sum of the ledger's quantities).
]]

-- The ledger's pin: a field no order_no can be, with a value longer than
-- hash-max-listpack-value (64 by default), written before a ledger's first
-- intent. The ledger is then a hashtable from the start and stays one: a
-- listpack (what Redis makes of a hash under 512 short fields, as a sale's
-- pending intents usually are) is searched and rewritten linearly, so every
-- HSET, HGET and HDEL on a ledger of a few hundred intents cost O(n). Every
-- reader of the ledger skips it (state.lua, and the engine, which reads
-- only fields that parse as order_nos).
local LEDGER_PIN = '~pin'
local function pin_ledger(ledger_key)
  redis.call('HSETNX', ledger_key, LEDGER_PIN, string.rep('~', 256))
end

-- Redis server time, in milliseconds.
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Whether order_no is in a shopper's list, failed or not. A plain find:
-- order_nos hold '-', a Lua pattern character.
local function listed(list, order_no)
  if not list then
    return false
  end
  local padded = ',' .. list .. ','
  return string.find(padded, ',' .. order_no .. ',', 1, true) ~= nil
    or string.find(padded, ',' .. order_no .. '!,', 1, true) ~= nil
end

-- A ledger entry. Numbers are written with %d: Lua numbers are doubles, and
-- tostring() would write 10^14 as "1e+14", which no reader parses back. The
-- user id stays the caller's string (ids reach 2^63 - 1, beyond a double).
local function ledger_entry(user, quantity, amount, accepted_ms)
  return user .. string.format(':%d:%d:%d', quantity, amount, accepted_ms)
end

-- The user id (as a string) and the quantity of a ledger entry.
local function entry_user_quantity(entry)
  local user, quantity = string.match(entry, '^(%d+):(%d+):')
  return user, tonumber(quantity)
end

-- Units a shopper holds in non-failed orders.
local function held_by(bought_key, user)
  return tonumber(redis.call('HGET', bought_key, user) or '0')
end

-- Takes `quantity` units for `order_no`: the stock, the shopper's count and
-- list (`mine` is the list before), the ledger entry and the counters. The
-- caller has checked the limit and the stock.
local function take(meta_key, stock_key, bought_key, orders_key, ledger_key, user, quantity, order_no, mine, entry)
  redis.call('DECRBY', stock_key, quantity)
  redis.call('HINCRBY', bought_key, user, quantity)
  if mine and mine ~= '' then
    redis.call('HSET', orders_key, user, mine .. ',' .. order_no)
  else
    redis.call('HSET', orders_key, user, order_no)
  end
  redis.call('HSET', ledger_key, order_no, entry)
  redis.call('HINCRBY', meta_key, 'held', quantity)
  redis.call('HINCRBY', meta_key, 'pending', quantity)
end

-- Removes a pending intent from the ledger (and its units from the `pending`
-- counter); returns its user id and quantity, or nil when it was not pending.
local function unpend(meta_key, ledger_key, order_no)
  local entry = redis.call('HGET', ledger_key, order_no)
  if not entry then
    return nil
  end
  local user, quantity = entry_user_quantity(entry)
  redis.call('HDEL', ledger_key, order_no)
  redis.call('HINCRBY', meta_key, 'pending', -quantity)
  return user, quantity
end

-- Adds `delta` to a shopper's held units (a field at 0 or below is removed,
-- as a non-buyer has none) and the `held` counter by what the hash's sum moved.
local function add_held(meta_key, bought_key, user, delta)
  local before = tonumber(redis.call('HGET', bought_key, user) or '0')
  local after = before + delta
  if after > 0 then
    redis.call('HSET', bought_key, user, after)
  else
    redis.call('HDEL', bought_key, user)
    after = 0
  end
  redis.call('HINCRBY', meta_key, 'held', after - before)
end

-- Marks order_no failed ("!") in a shopper's list and keeps only the newest
-- `keep_failed` failed ones, so the list (and every script's work on it)
-- stays within per_user_limit + keep_failed. A refunded order is marked the
-- same way: it holds no units any more.
local function mark_failed(orders_key, user, order_no, keep_failed)
  local mine = redis.call('HGET', orders_key, user)
  if not mine then
    return
  end
  -- Plain comparison: order_nos hold '-', a Lua pattern character.
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
  local drop = failed - keep_failed
  local kept = {}
  for _, item in ipairs(items) do
    if drop > 0 and string.sub(item, -1) == '!' then
      drop = drop - 1
    else
      kept[#kept + 1] = item
    end
  end
  redis.call('HSET', orders_key, user, table.concat(kept, ','))
end
