--[[
  idempotency.lua: one shopper's Idempotency-Key record, claimed and written
  in single atomic steps (no window between "is there a record?" and "take it").

  KEYS[1] record   hash  fp, order_no, state (in_flight | retry | done),
                         started_ms, status, body

  ARGV[1] mode "claim" | "put"

  claim: ARGV[2] fingerprint  ARGV[3] candidate order_no  ARGV[4] ttl_ms
         ARGV[5] stale_ms (an in-flight attempt older than this is presumed dead)
    No record: records the candidate as in flight.
    Returns:
      {1, order_no}          new: go ahead with the candidate. Also when the
                             record holds the candidate already: a client
                             re-sends a command after a dropped connection,
                             and the re-sent claim must find its own record
                             as its own, not as "in progress".
      {2, order_no}          resume: an attempt with this order_no ended
                             without an answer (retry) or died (stale); the
                             record is in flight again from now
      {3, status, body}      done: replay this answer
      {4}                    in progress (a live attempt holds the key)
      {5}                    the key was used for another request

  put:   ARGV[2] fingerprint  ARGV[3] order_no  ARGV[4] ttl_ms  ARGV[5] state
         ARGV[6] status  ARGV[7] body   (status and body only for "done")
    Overwrites the record and its time to live. Returns 1.

  Uses prelude.lua (now_ms).
]]
local mode = ARGV[1]
local ttl_ms = tonumber(ARGV[4])
if (mode ~= 'claim' and mode ~= 'put') or not ttl_ms or ttl_ms < 1 then
  return redis.error_reply('ERR usage: claim|put fingerprint order_no ttl_ms ...')
end

local now = now_ms()

local function record(fp, order_no, state)
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', fp, 'order_no', order_no, 'state', state,
    'started_ms', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end

if mode == 'put' then
  local state = ARGV[5]
  if state ~= 'in_flight' and state ~= 'retry' and state ~= 'done' then
    return redis.error_reply('ERR state must be in_flight, retry or done')
  end
  record(ARGV[2], ARGV[3], state)
  if state == 'done' then
    redis.call('HSET', KEYS[1], 'status', ARGV[6], 'body', ARGV[7])
  end
  return 1
end

-- claim
local fp, candidate, stale_ms = ARGV[2], ARGV[3], tonumber(ARGV[5])
local existing = redis.call('HMGET', KEYS[1], 'fp', 'order_no', 'state', 'started_ms', 'status', 'body')
if not existing[1] then
  record(fp, candidate, 'in_flight')
  return {1, candidate}
end
if existing[1] ~= fp then
  return {5}
end
local order_no, state = existing[2], existing[3]
if order_no == candidate then
  return {1, candidate}
end
if state == 'done' then
  return {3, existing[5], existing[6]}
end
if state == 'in_flight' and now - tonumber(existing[4]) < stale_ms then
  return {4}
end
record(fp, order_no, 'in_flight')
return {2, order_no}
