-- Start a delivery of one batch, in one round trip.
--
-- KEYS[1] committed hash   (a committed batch is not run again)
-- KEYS[2] attempts hash    batch key -> deliveries so far
-- KEYS[3] job hash         ('started' set once, 'state' read)
-- KEYS[4] workers hash     "node/pid" -> last batch start (active workers)
-- KEYS[5] batches hash     batch key -> its planned indices (the plan)
-- KEYS[6] the batch's liveness mark (AttemptMark)
-- ARGV[1] batch key
-- ARGV[2] worker ("node/pid", or '' to record none)
-- ARGV[3] now (epoch seconds)
-- ARGV[4] the message's indices as the plan stores them ('' : not checked)
-- ARGV[5] this attempt's mark ('' : none)
-- ARGV[6] the mark's time to live (milliseconds)
-- Returns {-1, '', 0} when the job planned no such batch with these indices (nothing is
-- written), {0, '', 0} when the batch is committed, else {attempt number, the job's state,
-- 1 when the mark was set}. The first delivery sets its mark here, atomically with its
-- count, so a delivery racing it always finds the mark; a later one checks the previous
-- attempt's mark first and sets its own afterwards.
if ARGV[4] ~= '' and redis.call('HGET', KEYS[5], ARGV[1]) ~= ARGV[4] then return {-1, '', 0} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {0, '', 0} end
local attempt = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSETNX', KEYS[3], 'started', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[3]) end
local marked = 0
if attempt == 1 and ARGV[5] ~= '' then
  redis.call('SET', KEYS[6], ARGV[5], 'PX', ARGV[6])
  marked = 1
end
return {attempt, redis.call('HGET', KEYS[3], 'state') or '', marked}
