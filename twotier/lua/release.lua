-- A loader failed or was cancelled: give up its lease, and wake any waiters so
-- one of them can load instead of waiting for the lease to expire.
-- KEYS: tag-version hash (unused, kept for the common layout), lease
-- ARGV: lease token, channel, origin, key
end_lease(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
