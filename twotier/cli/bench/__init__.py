"""`twotier bench`: benchmarks against the floors and the peers (`run.main` parses its own args)."""
