"""Benchmarks: ``python -m bench [train|serve] [--quick]``; results land in ``bench/results/*.json``."""
