--[[
  unlock.lua: release a lock only if we still hold it (compare and delete).

  KEYS[1] lock key
  ARGV[1] the holder's random token

  Returns: 1 released, 0 the lock was not ours (expired, taken by another).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
