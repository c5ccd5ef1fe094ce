-- Set one field of a hash only while a lock holds this holder's token (a gather that
-- lost its lock must not write).
--
-- KEYS[1] the lock's key
-- KEYS[2] the hash
-- ARGV[1] the holder's token
-- ARGV[2] field, ARGV[3] value
-- Returns 1 when written, 0 when the lock is not held by the token.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
