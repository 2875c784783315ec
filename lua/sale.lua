--[[
  sale.lua: an operator's change to a sale's parameters in Redis, in one
  step. The caller holds the event row FOR UPDATE in Postgres (the fence of
  src/loading.rs) and writes the same values there before it commits, so
  Postgres's values are the truth passed in here.

  purchase.lua reads ends_ms and paused in the HMGET it makes anyway: once
  this script has run, no purchase is accepted after an end or a pause, on
  any engine process.

  KEYS[1] meta   hash   price, limit, starts_ms, ends_ms, paused, total, ...

  ARGV[1] mode
    "set"  ARGV[2] price  ARGV[3] limit  ARGV[4] starts_ms  ARGV[5] ends_ms
           ARGV[6] paused ("1" or "0"): written as they are.
    "end"  ARGV[2] starts_ms  ARGV[3] ends_ms (the window as Postgres holds
           it): the sale ends now, by Redis time: ends_ms = min(ends_ms, now);
           a sale that had not started gets starts_ms = ends_ms - 1 (a window
           is never empty). Computed even when the event is not loaded, so
           Postgres records the same end.

    "pause" ARGV[2] "1" (pause) or "0" (resume): only the pause flag.

  The kill switch ("end", "pause") runs first without the fence, so it
  holds at once even while writer batches keep the event row busy; the
  fenced step then writes Postgres and "set"s everything again from it.

  Nothing is written to an event that is not loaded (not preheated, or lost
  and not rebuilt yet: the rebuild loads Postgres's values).

  Uses prelude.lua (now_ms).

  Returns: {loaded (1|0), now_ms, starts_ms, ends_ms}   (the window after)
]]
local mode = ARGV[1]
local loaded = redis.call('EXISTS', KEYS[1])
local now = now_ms()

if mode == 'set' then
  for i = 2, 6 do
    if not tonumber(ARGV[i]) then
      return redis.error_reply('ERR set takes five numbers')
    end
  end
  if loaded == 1 then
    redis.call('HSET', KEYS[1], 'price', ARGV[2], 'limit', ARGV[3],
      'starts_ms', ARGV[4], 'ends_ms', ARGV[5], 'paused', ARGV[6])
  end
  return {loaded, now, tonumber(ARGV[4]), tonumber(ARGV[5])}
end

if mode == 'end' then
  local starts, ends = tonumber(ARGV[2]), tonumber(ARGV[3])
  if not starts or not ends then
    return redis.error_reply('ERR end takes starts_ms and ends_ms')
  end
  if now < ends then
    ends = now
  end
  if starts >= ends then
    starts = ends - 1
  end
  if loaded == 1 then
    redis.call('HSET', KEYS[1], 'starts_ms', starts, 'ends_ms', ends)
  end
  return {loaded, now, starts, ends}
end

if mode == 'pause' then
  if ARGV[2] ~= '1' and ARGV[2] ~= '0' then
    return redis.error_reply('ERR pause takes 1 or 0')
  end
  if loaded == 1 then
    redis.call('HSET', KEYS[1], 'paused', ARGV[2])
  end
  return {loaded, now, 0, 0}
end

return redis.error_reply('ERR mode must be set, end or pause')
