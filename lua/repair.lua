--[[
  repair.lua: correct drifted stock and buyer counts, but only if the state is
  still exactly what the reconciler observed. A purchase, release or ack in
  between changes the stock, the `pending` counter or a buyer's units, and
  then nothing is written: the reconciler looks again on its next pass.
  Never a blind SET while a sale runs. The `held` counter follows the
  corrected buyers.

  KEYS[1] meta  KEYS[2] stock  KEYS[3] bought

  ARGV[1] observed stock_left ("-": leave the stock alone)  ARGV[2] corrected stock_left
  ARGV[3] observed `pending` counter ("-": do not compare it)
  ARGV[4] corrected `held` counter ("-": move it by the buyers' corrections)
  then repeated groups of 3: user_id, observed units, corrected units

  Returns: 1 repaired, 0 the state moved (nothing written)
]]
if (#ARGV - 4) % 3 ~= 0 then
  return redis.error_reply('ERR repair takes groups of 3')
end
if ARGV[1] ~= '-' and tonumber(redis.call('GET', KEYS[2]) or '-1') ~= tonumber(ARGV[1]) then
  return 0
end
if ARGV[3] ~= '-' and tonumber(redis.call('HGET', KEYS[1], 'pending') or '0') ~= tonumber(ARGV[3]) then
  return 0
end
for i = 5, #ARGV, 3 do
  if tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0') ~= tonumber(ARGV[i + 1]) then
    return 0
  end
end
-- Everything is as observed; the writes start here.
if ARGV[1] ~= '-' then
  redis.call('SET', KEYS[2], ARGV[2])
end
local held = 0
for i = 5, #ARGV, 3 do
  local after = tonumber(ARGV[i + 2])
  held = held + after - tonumber(ARGV[i + 1])
  if after > 0 then
    redis.call('HSET', KEYS[3], ARGV[i], after)
  else
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
end
if ARGV[4] ~= '-' then
  redis.call('HSET', KEYS[1], 'held', ARGV[4])
elseif held ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'held', held)
end
return 1
