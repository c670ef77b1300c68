"""Scripts that build the shipped suites in ``eval_suites/data`` (run from a checkout; not installed)."""
