--[[
  refund.lua: the units of refunded orders go back to the sale, exactly once
  each (Postgres has committed each refund before this runs).

  The `returned` set records every order_no whose units came back, in the
  same atomic step as the stock, so a replay (the request retried, the
  reconciler finishing a refund a crash interrupted, a second engine) finds
  it there and changes nothing. For each order: the stock grows by its
  quantity, its shopper's units (`bought`, and the `held` counter) shrink by
  it, so their allowance is restored, and it is marked "!" in their list
  (it holds nothing any more; the newest ARGV[1] such ones are kept).

  An order whose intent is still pending in the ledger (its writer has not
  acked it yet) is not returned now: its units are counted by the ledger
  until the ack, and a return then would be undone by nothing. The caller
  retries after the ack.

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought  KEYS[4] orders  KEYS[5] ledger
  KEYS[6] returned  set of order_nos whose units came back

  ARGV[1] how many failed order_nos to keep per shopper
  ARGV[2..] groups of 3: order_no, user_id, quantity

  Returns one code per order, in order:
    0  the event is not loaded (closed out, lost, or being rebuilt: a
       rebuild counts every refund of Postgres as returned)
    1  returned now
    2  already returned (a replay)
    3  still pending in the ledger: retry after the ack

  Uses prelude.lua (add_held, mark_failed).
]]
local KEEP_FAILED = tonumber(ARGV[1])
if not KEEP_FAILED or (#ARGV - 1) % 3 ~= 0 then
  return redis.error_reply('ERR usage: keep_failed (order_no user_id quantity)...')
end
local codes = {}
local loaded = redis.call('EXISTS', KEYS[1]) == 1
for i = 2, #ARGV, 3 do
  local order_no, user, quantity = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if not loaded then
    codes[#codes + 1] = 0
  elseif redis.call('SISMEMBER', KEYS[6], order_no) == 1 then
    codes[#codes + 1] = 2
  elseif redis.call('HEXISTS', KEYS[5], order_no) == 1 then
    codes[#codes + 1] = 3
  else
    redis.call('SADD', KEYS[6], order_no)
    redis.call('INCRBY', KEYS[2], quantity)
    add_held(KEYS[1], KEYS[3], user, -quantity)
    mark_failed(KEYS[4], user, order_no, KEEP_FAILED)
    codes[#codes + 1] = 1
  end
end
return codes
