"""Meta nodes the scheduler runs itself (``meta.map``, ``meta.switch``): pure, like the core.

``processors.scheduler.map_state`` holds a map's progress (part of ``RunState``); ``fold``
applies the map events; ``map`` and ``switch`` decide. See docs/decisions/0024-chunked-map.md.
"""
