"""Benchmarks of REFLUX: ``make bench`` (``python -m benchmarks.run``); see benchmarks/README.md."""

import os

# The benchmarks' stub dependencies listen on 127.0.0.1 at ephemeral ports, which the egress
# policy denies by default: their operator allows exactly that address (every port but the
# platform's own, which need exact host:port entries). Before any Settings is built; the
# environment wins (docs/nodes.md#security).
os.environ.setdefault("REFLUX_EGRESS_ALLOW", '["127.0.0.1"]')
