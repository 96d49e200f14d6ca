-- A loader failed or was cancelled: give up its lease. Returns 1 when others
-- wait for it (the client then wakes them, so one of them loads instead of
-- waiting for the lease to expire).
-- KEYS: lease
-- ARGV: token@generation
return end_lease(KEYS[1], ARGV[1]) and 1 or 0
