--[[
  transfer.lua: stock moving between two buckets of one event. Each step is
  atomic on one bucket and applied at most once; the units are always in
  exactly one place: the source's stock, the source's record of the
  transfer (in flight), or the target's stock.

    1. "out" on the source takes units from its stock and records the
       transfer under its id (in flight);
    2. "in" on the target adds them to its stock, once per id (the id joins
       the target's `transfers-in` set in the same step);
    3. "done" on the source drops the record once the target has the id.

  A crash after 1 leaves the record: the reconciler looks the id up in the
  target's set and runs 2 (when it is missing) and 3. Nothing is lost, and
  since 2 is once per id, nothing is created.

  The meta hash keeps, per bucket: `total` (units this bucket is
  accountable for: stock, held by buyers, pending: it moves by the
  transferred units on each side), `moved_out` / `moved_in` (units given and
  received, for the dashboard), `in_flight` (units in this bucket's records)
  and `transfer_seq` (bumped by every step, so a reader can tell that
  several buckets did not move while it read them one after another).

  KEYS[1] meta  KEYS[2] stock  KEYS[3] transfers_out  KEYS[4] transfers_in

  ARGV[1] mode  ARGV[2] transfer id
    "out"   ARGV[3] target index  ARGV[4] units at least (the purchase's
            quantity)  ARGV[5] units at most otherwise: half the stock
            left, within those bounds, never more than all of it (small
            moves keep a bucket's own shoppers served, and few units go
            back and forth between busy buckets).
                                Returns units moved out (0: none to give,
                                -1: bucket not loaded).
    "in"    ARGV[3] source index  ARGV[4] units.
                                Returns 1 applied, 2 applied before,
                                0 bucket not loaded (nothing written).
    "done"                      Returns 1 dropped, 0 no such record.
]]
local mode, id = ARGV[1], ARGV[2]
if not id or id == '' then
  return redis.error_reply('ERR transfer id missing')
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if mode == 'out' then
    return -1
  end
  return 0
end

if mode == 'out' then
  local target, at_least, at_most = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  if not target or not at_least or at_least < 1 or not at_most then
    return redis.error_reply('ERR out takes target index, units at least and at most')
  end
  if redis.call('HEXISTS', KEYS[3], id) == 1 then
    return redis.error_reply('ERR transfer id already used')
  end
  local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
  if stock < 1 then
    return 0
  end
  local units = math.max(at_least, math.min(math.ceil(stock / 2), at_most))
  if units > stock then
    units = stock
  end
  redis.call('DECRBY', KEYS[2], units)
  redis.call('HSET', KEYS[3], id, string.format('%d:%d', target, units))
  redis.call('HINCRBY', KEYS[1], 'total', -units)
  redis.call('HINCRBY', KEYS[1], 'moved_out', units)
  redis.call('HINCRBY', KEYS[1], 'in_flight', units)
  redis.call('HINCRBY', KEYS[1], 'transfer_seq', 1)
  return units
end

if mode == 'in' then
  local units = tonumber(ARGV[4])
  if not tonumber(ARGV[3]) or not units or units < 1 then
    return redis.error_reply('ERR in takes source index and units')
  end
  if redis.call('SADD', KEYS[4], id) == 0 then
    return 2
  end
  redis.call('INCRBY', KEYS[2], units)
  redis.call('HINCRBY', KEYS[1], 'total', units)
  redis.call('HINCRBY', KEYS[1], 'moved_in', units)
  redis.call('HINCRBY', KEYS[1], 'transfer_seq', 1)
  return 1
end

if mode == 'done' then
  local record = redis.call('HGET', KEYS[3], id)
  if not record then
    return 0
  end
  local units = tonumber(string.match(record, ':(%d+)$'))
  redis.call('HDEL', KEYS[3], id)
  redis.call('HINCRBY', KEYS[1], 'in_flight', -units)
  redis.call('HINCRBY', KEYS[1], 'transfer_seq', 1)
  return 1
end

return redis.error_reply('ERR mode must be out, in or done')
