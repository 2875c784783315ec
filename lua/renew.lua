--[[
  renew.lua: extend a lock's TTL only if we still hold it.

  KEYS[1] lock key
  ARGV[1] the holder's random token   ARGV[2] new TTL in milliseconds

  Returns: 1 renewed, 0 the lock is no longer ours (stop the guarded work).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
