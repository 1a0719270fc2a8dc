"""The canary judge: keeps or rolls back an applied proposal from its live runs (ADR 0033).

Pure core: :mod:`~processors.canary.sequential` (always-valid confidence sequences) and
:mod:`~processors.canary.judge` (the three tests and the decision). The runtime edge is
:mod:`~processors.canary.runtime` (reads the ``runs`` read model and the traces' cost, publishes
``MutationRequest`` keep / rollback with actor ``canary``). docs/learning.md, section "Canary".
"""
