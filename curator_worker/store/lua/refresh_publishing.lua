-- Refresh the heartbeat of the producer publishing a job's tasks, while it is marked.
--
-- KEYS[1] job hash
-- ARGV[1] the new publishing marker (JSON: pid, host, since, seen)
-- Returns 0 when the job is no longer marked as publishing (nothing written).
if redis.call('HEXISTS', KEYS[1], 'publishing') == 1 then
  return redis.call('HSET', KEYS[1], 'publishing', ARGV[1])
end
return 0
