-- Commit one batch atomically: its per-index results, its filter shards and the counters.
-- A batch already committed is left alone (redelivery, or two attempts racing).
--
-- KEYS[1] job hash         (counters: done, failed, committed_batches)
-- KEYS[2] committed hash   batch key -> commit record (shards, host, pid, attempt)
-- KEYS[3] results hash     index -> result JSON ({"paths": [...]} or {"error": {...}})
-- KEYS[4] failures hash    index -> error JSON, for failed indices only
-- KEYS[5] in-flight hash   batch key -> indices processed so far (live progress)
-- ARGV[1] batch key
-- ARGV[2] commit record JSON
-- ARGV[3] number of index results n, then n triples: index, "ok"|"err", result JSON
-- Returns 1 when this call committed the batch, 0 when it was already committed.
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[5], ARGV[1])
  return 0
end
local n = tonumber(ARGV[3])
local done, failed = 0, 0
for k = 0, n - 1 do
  local index = ARGV[4 + 3 * k]
  local outcome = ARGV[5 + 3 * k]
  local result = ARGV[6 + 3 * k]
  local was_failed = redis.call('HEXISTS', KEYS[4], index) == 1
  local existed = redis.call('HEXISTS', KEYS[3], index) == 1
  if outcome == 'ok' then
    redis.call('HSET', KEYS[3], index, result)
    if was_failed then
      redis.call('HDEL', KEYS[4], index)
      failed = failed - 1
      done = done + 1
    elseif not existed then
      done = done + 1
    end
  elseif not existed or was_failed then
    redis.call('HSET', KEYS[3], index, result)
    redis.call('HSET', KEYS[4], index, result)
    if not existed then
      failed = failed + 1
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'done', done)
redis.call('HINCRBY', KEYS[1], 'failed', failed)
redis.call('HINCRBY', KEYS[1], 'committed_batches', 1)
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
