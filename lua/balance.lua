--[[
  balance.lua: set one stock bucket's stock to its total less what its
  shoppers hold (stock + held = total is kept by every script that moves
  units; a Redis failover that lost some writes can break it). Compare,
  then write: only if the stock and the counters `held`, `pending` and
  `total` are still what the reconciler read, so no purchase, release,
  ack or transfer ran in between.

  KEYS[1] meta  KEYS[2] stock

  ARGV[1] observed stock  ARGV[2] observed held  ARGV[3] observed pending
  ARGV[4] observed total  ARGV[5] (optional) a corrected total: then only
  the total is written, the stock left as it is (the reconciler's
  settlement of the buckets' totals against Postgres's stock_total).

  Returns: the stock (or total) written, or -1 when the state moved
  (nothing written).
]]
local meta = redis.call('HMGET', KEYS[1], 'held', 'pending', 'total')
local stock = tonumber(redis.call('GET', KEYS[2]) or '-1')
if stock ~= tonumber(ARGV[1]) or tonumber(meta[1] or '-1') ~= tonumber(ARGV[2])
  or tonumber(meta[2] or '0') ~= tonumber(ARGV[3]) or tonumber(meta[3] or '-1') ~= tonumber(ARGV[4]) then
  return -1
end
if ARGV[5] then
  redis.call('HSET', KEYS[1], 'total', ARGV[5])
  return tonumber(ARGV[5])
end
local balanced = tonumber(ARGV[4]) - tonumber(ARGV[2])
if balanced < 0 then
  balanced = 0
end
redis.call('SET', KEYS[2], balanced)
return balanced
