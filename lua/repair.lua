--[[
  repair.lua: correct drifted stock and buyer counts, but only if the state is
  still exactly what the reconciler observed. A purchase or release in
  between changes the stock or the ledger, and then nothing is written: the
  reconciler looks again on its next pass. Never a blind SET while a sale runs.

  KEYS[1] stock  KEYS[2] bought  KEYS[3] ledger

  ARGV[1] observed stock_left  ARGV[2] corrected stock_left
  ARGV[3] observed ledger size
  then repeated groups of 3: user_id, observed units, corrected units

  Returns: 1 repaired, 0 the state moved (nothing written)
]]
if (#ARGV - 3) % 3 ~= 0 then
  return redis.error_reply('ERR repair takes groups of 3')
end
if tonumber(redis.call('GET', KEYS[1]) or '-1') ~= tonumber(ARGV[1]) then
  return 0
end
if redis.call('HLEN', KEYS[3]) ~= tonumber(ARGV[3]) then
  return 0
end
for i = 4, #ARGV, 3 do
  if tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') ~= tonumber(ARGV[i + 1]) then
    return 0
  end
end
-- Everything is as observed; the writes start here.
redis.call('SET', KEYS[1], ARGV[2])
for i = 4, #ARGV, 3 do
  if tonumber(ARGV[i + 2]) > 0 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 1
