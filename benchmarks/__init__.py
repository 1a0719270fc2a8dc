"""Benchmarks of REFLUX: ``make bench`` (``python -m benchmarks.run``); see benchmarks/README.md."""
