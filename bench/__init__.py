"""Benchmarks run by hand (`python bench/<name>.py`); bench.support holds what they share."""
