"""Scenario modules of ``make bench-loop`` (:mod:`benchmarks.loop_bench`), and their stubs."""
