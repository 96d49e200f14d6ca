-- Meet the server that holds the control slot (`meet_server`), and return its
-- run id. The listener calls it on every (re)connection before it trusts the
-- version mirror, so a new server starts its generation before any read.
-- KEYS, ARGV: the control-script convention (prelude)
meet_server()
return run_id()
