-- Start a delivery of one batch, in one round trip.
--
-- KEYS[1] committed hash   (a committed batch is not run again)
-- KEYS[2] attempts hash    batch key -> deliveries so far
-- KEYS[3] job hash         ('started' set once, 'state' read)
-- KEYS[4] workers hash     "node/pid" -> last batch start (active workers)
-- ARGV[1] batch key
-- ARGV[2] worker ("node/pid", or '' to record none)
-- ARGV[3] now (epoch seconds)
-- Returns {0, ''} when the batch is committed, else {attempt number, the job's state}.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {0, ''} end
local attempt = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSETNX', KEYS[3], 'started', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[3]) end
return {attempt, redis.call('HGET', KEYS[3], 'state') or ''}
