-- Delete a lock (or liveness mark) only if it still holds this holder's token.
--
-- KEYS[1] the lock's key
-- ARGV[1] the holder's token
-- Returns 1 when released, 0 when another holder (or none) has it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
