"""The optimizer: turns critic diagnoses into workflow mutation proposals (ADR 0032).

Pure core: :mod:`.strategies` (the strategy library), :mod:`.bandit` (model / node version choice),
:mod:`.planner` (historian first, policy, one open proposal per key, the ``MutationRequest``);
runtime edge: :mod:`.runtime` (a faust-streaming agent on ``diagnoses``). docs/learning.md.
"""
