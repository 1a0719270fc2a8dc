"""Meta nodes the scheduler itself drives (pure logic; ``decide``/``evolve`` call small hooks).

- :mod:`processors.scheduler.meta.ai_plan`: ``ai.meta``, an LLM-planned sub-graph (ADR 0027).
"""
