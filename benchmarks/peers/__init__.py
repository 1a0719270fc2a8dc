"""Peer benchmarks: the same workload as REFLUX's run-engine benchmark, run on another engine.

See docs/decisions/0005-benchmark-peer.md for what is compared and the caveats.
"""
