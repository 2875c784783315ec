--[[
  preheat.lua: load an event's sale into Redis, or rebuild it from Postgres truth.

  Mode "init": only when the event is not in Redis yet; sets the sale
  parameters and the full stock. When the event is already loaded it changes
  nothing and answers 0, so preheating twice is harmless.

  Mode "rebuild": replaces the event's Redis state with Postgres truth plus
  the intents still pending in the ledger. Pending intents whose order is in
  Postgres are dropped from the ledger (confirmed: acked; failed: their stock
  is simply not counted). Runs as one script, so no purchase interleaves.

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought  KEYS[4] orders  KEYS[5] ledger

  ARGV[1] mode ("init" | "rebuild")
  ARGV[2] price  ARGV[3] limit  ARGV[4] starts_ms  ARGV[5] ends_ms  ARGV[6] total
  ARGV[7] failed order_nos kept per shopper (the newest; see release.lua)
  rebuild only, then repeated groups of 4, oldest first:
    order_no, user_id, quantity, failed ("1" | "0")   -- every order in Postgres

  Returns:
    init:    1 loaded, 0 already loaded
    rebuild: {stock_left, pending_intents_kept}

  Uses prelude.lua (entry_user_quantity).
]]
local mode = ARGV[1]
local total = tonumber(ARGV[6])
if mode ~= 'init' and mode ~= 'rebuild' then
  return redis.error_reply('ERR mode must be init or rebuild')
end
if (#ARGV - 7) % 4 ~= 0 or not tonumber(ARGV[7]) then
  return redis.error_reply('ERR rebuild takes keep_failed, then groups of 4')
end
local keep_failed = tonumber(ARGV[7])

local function set_meta()
  redis.call('HSET', KEYS[1], 'price', ARGV[2], 'limit', ARGV[3],
    'starts_ms', ARGV[4], 'ends_ms', ARGV[5], 'total', ARGV[6])
end

if mode == 'init' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
  end
  set_meta()
  redis.call('SET', KEYS[2], total)
  redis.call('DEL', KEYS[3], KEYS[4])
  return 1
end

-- rebuild
local held = {}
local orders = {}
local persisted = {}
local taken = 0
local function add_order(user, order_no, quantity, failed)
  orders[user] = orders[user] or {}
  table.insert(orders[user], order_no .. (failed and '!' or ''))
  if not failed then
    held[user] = (held[user] or 0) + quantity
    taken = taken + quantity
  end
end

-- Newest failed orders only, as release.lua keeps them.
local failed_left = {}
for i = #ARGV - 3, 8, -4 do
  if ARGV[i + 3] == '1' then
    local user = ARGV[i + 1]
    failed_left[user] = (failed_left[user] or keep_failed) - 1
    if failed_left[user] < 0 then
      ARGV[i + 3] = 'skip'
    end
  end
end
for i = 8, #ARGV, 4 do
  local order_no, user, quantity, failed = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  persisted[order_no] = true
  if failed ~= 'skip' then
    add_order(user, order_no, quantity, failed == '1')
  end
end

local kept = 0
local settled = {}
local pending = redis.call('HGETALL', KEYS[5])
for i = 1, #pending, 2 do
  local order_no, entry = pending[i], pending[i + 1]
  if persisted[order_no] then
    settled[#settled + 1] = order_no
  else
    local user, quantity = entry_user_quantity(entry)
    add_order(user, order_no, quantity, false)
    kept = kept + 1
  end
end

local left = total - taken
if left < 0 then
  return redis.error_reply('ERR orders exceed stock_total; refusing to rebuild')
end
-- Everything is validated; the writes start here.
for _, order_no in ipairs(settled) do
  redis.call('HDEL', KEYS[5], order_no)
end
set_meta()
redis.call('SET', KEYS[2], left)
redis.call('DEL', KEYS[3], KEYS[4])
for user, quantity in pairs(held) do
  redis.call('HSET', KEYS[3], user, quantity)
end
for user, list in pairs(orders) do
  redis.call('HSET', KEYS[4], user, table.concat(list, ','))
end
return {left, kept}
