-- Set a job's state as a compare-and-set, with its expiry, in one step.
--
-- A finished job's state never changes by itself: the new state is written only when the
-- current one is among the expected ones and, for a gather, only while the gather still
-- holds the job's gather lock (a gather frozen past its lock's expiry stops without writing).
-- A final state also wakes waiters (a push on the done list) and starts the expiry of every
-- key of the job, in the same step.
--
-- KEYS[1]  job hash
-- KEYS[2]  done list (pushed when the state is final)
-- KEYS[3]  the gather lock (only read when ARGV[3] is set)
-- KEYS[4..] every key of the job, expired after ARGV[4] seconds when the state is final
-- ARGV[1]  new state
-- ARGV[2]  expected current states, comma-separated
-- ARGV[3]  gather lock token that must still hold the lock ('' for none)
-- ARGV[4]  seconds the job's keys are kept once final ('' when the new state is not final)
-- ARGV[5..] pairs: other record field, value
-- Returns {1, previous state} when written, {0, current state} when not ({0, ''}: no job).
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {0, ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. current .. ',', 1, true) then
  return {0, current}
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then return {0, current} end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
for k = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[k], ARGV[k + 1])
end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  for k = 4, #KEYS do
    redis.call('EXPIRE', KEYS[k], tonumber(ARGV[4]))
  end
end
return {1, current}
