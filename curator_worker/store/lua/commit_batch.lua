-- Commit one batch atomically: its per-index results, its filter shards and the counters.
-- A batch already committed is left alone (redelivery, or two attempts racing).
--
-- The batch's per-index records travel and are stored as one JSON array (a "result blob"):
-- one field per batch instead of one per index, so a commit costs O(1) Redis work per
-- succeeded index and the worker encodes one JSON text, not one per index.
--
-- KEYS[1] job hash         (counters: done, failed, committed_batches)
-- KEYS[2] committed hash   batch key -> commit record (shards, host, pid, attempt)
-- KEYS[3] results hash     batch key -> JSON array of the batch's per-index records
-- KEYS[4] failures hash    index -> error record, for failed indices only
-- KEYS[5] in-flight hash   batch key -> indices processed so far (live progress)
-- KEYS[6] the batch's liveness mark (AttemptMark), released when it holds ARGV[5]
-- ARGV[1] batch key
-- ARGV[2] commit record JSON
-- ARGV[3] result blob JSON (stored as is)
-- ARGV[4] JSON array of the indices that succeeded
-- ARGV[5] the committing attempt's mark ('' : none)
-- ARGV[6..] pairs: failed index, its record JSON
-- Returns 0 when the batch was already committed, 1 when this call committed it, 2 when it
-- committed it and every planned batch of the job is now committed (the caller may gather).
--
-- Counters: a succeeded index counts as done; if it had failed before (a retry batch), it
-- leaves the failures and the failed count. A failed index counts as failed once, however
-- many retry rounds fail it again.
if ARGV[5] ~= '' and redis.call('GET', KEYS[6]) == ARGV[5] then redis.call('DEL', KEYS[6]) end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[5], ARGV[1])
  return 0
end
local ok = cjson.decode(ARGV[4])
local n_ok = #ok
local failed = 0
if n_ok > 0 and redis.call('HLEN', KEYS[4]) > 0 then
  for s = 1, n_ok, 1000 do
    failed = failed - redis.call('HDEL', KEYS[4], unpack(ok, s, math.min(s + 999, n_ok)))
  end
end
for k = 6, #ARGV, 2 do
  failed = failed + redis.call('HSET', KEYS[4], ARGV[k], ARGV[k + 1])
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'done', n_ok)
redis.call('HINCRBY', KEYS[1], 'failed', failed)
local committed = redis.call('HINCRBY', KEYS[1], 'committed_batches', 1)
redis.call('HDEL', KEYS[5], ARGV[1])
if committed >= tonumber(redis.call('HGET', KEYS[1], 'n_batches') or '0') then
  return 2
end
return 1
