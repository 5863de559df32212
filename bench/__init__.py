"""Benchmarks; run from the repo root, e.g. `python -m bench.cold_start --markdown`."""
