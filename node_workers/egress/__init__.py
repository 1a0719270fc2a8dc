"""Egress policy of the nodes that connect where a workflow says.

See docs/decisions/0045-egress-policy.md.

:mod:`node_workers.egress.policy` is the pure decision; :mod:`node_workers.egress.net` resolves,
checks and connects.
"""
