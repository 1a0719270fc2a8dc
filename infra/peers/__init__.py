"""Peer systems that REFLUX's benchmarks are compared against, run locally on loopback.

They are not part of REFLUX's stack (``infra.stack`` does not start them): only the peer
benchmarks in ``benchmarks/`` use them. See docs/decisions/0005-benchmark-peer.md.
"""
