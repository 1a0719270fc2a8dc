"""Workflow mutation proposals: one lifecycle for people and for the optimizer (docs/mutations.md).

Pure core: :mod:`~processors.mutations.lifecycle` (``decide``/``evolve``),
:mod:`~processors.mutations.validation` (the pluggable validation stages) and
:mod:`~processors.mutations.routing` (which workflow version a new run gets). The runtime edge
is :mod:`~processors.mutations.runtime`.
"""
