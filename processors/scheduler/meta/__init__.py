"""Meta nodes the scheduler itself drives (pure logic; ``decide``/``evolve`` call small hooks).

- :mod:`processors.scheduler.meta.ai_plan`: ``ai.meta``, an LLM-planned sub-graph (ADR 0027).
- :mod:`processors.scheduler.meta.map`, :mod:`~processors.scheduler.meta.switch`,
  :mod:`~processors.scheduler.meta.fold`: ``meta.map`` (chunked; its progress is
  :mod:`processors.scheduler.map_state`, part of ``RunState``) and ``meta.switch``
  (docs/decisions/0024-chunked-map.md).
"""
