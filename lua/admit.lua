--[[
  admit.lua: a writer's check, just before it persists a batch, that Redis
  still accounts for every intent in it.

  Normally every intent is still pending in the ledger and this changes
  nothing. After Redis lost the event (restart without persistence) and it
  was rebuilt from Postgres, intents that were queued in some engine's memory
  are counted nowhere; persisting them as they are would sell their stock a
  second time. Such an intent takes its stock again from what is left, as a
  purchase would (same per-user limit); if it no longer fits, it is refused
  and persisted as a failed order. Never an oversell.

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought  KEYS[4] orders  KEYS[5] ledger

  ARGV  repeated groups of 5: order_no, user_id, quantity, amount, accepted_ms

  Uses prelude.lua (listed, held_by, ledger_entry, take, pin_ledger).

  Returns:
    -1                        the event is not loaded (lost, not rebuilt yet): wait
    {state, state, ...}       one per intent, in order:
                              1 pending in the ledger (or already settled)
                              2 lost, stock taken again (now pending)
                              0 lost and refused (no stock left for it)
]]
if #ARGV % 5 ~= 0 then
  return redis.error_reply('ERR admit takes groups of 5')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
local states = {}
for i = 1, #ARGV, 5 do
  local order_no, user, quantity = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local state = 1
  if redis.call('HEXISTS', KEYS[5], order_no) == 0 then
    local mine = redis.call('HGET', KEYS[4], user)
    if not listed(mine, order_no) then
      local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
      if stock >= quantity and held_by(KEYS[3], user) + quantity <= limit then
        pin_ledger(KEYS[5])
        take(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], user, quantity, order_no, mine,
          ledger_entry(user, quantity, tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])))
        state = 2
      else
        state = 0
      end
    end
  end
  states[#states + 1] = state
end
return states
