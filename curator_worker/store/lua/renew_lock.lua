-- Extend a lock's time to live only if it still holds this holder's token.
--
-- KEYS[1] the lock's key
-- ARGV[1] the holder's token
-- ARGV[2] the new time to live, milliseconds
-- Returns 1 when renewed, 0 when the lock was lost (expired, then taken or not).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
