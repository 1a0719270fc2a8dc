"""The engine under test, in one of two topologies.

- ``processes`` (what ``make bench`` measures): one OS process per component
  (:class:`reflux.processes.ProcessEngine`, also ``reflux dev --processes N``), as users deploy
  the engine (``reflux scheduler``, ``reflux worker``, ``reflux projector``, ``reflux
  trigger-router``; README "Components run together or apart"). Each has its own interpreter,
  so the components use both cores instead of sharing one GIL.
- ``dev``: every component in a thread of the benchmark process (:class:`reflux.dev.DevEngine`,
  ``reflux dev``), the topology of the measurements before 2026-12.

Both expose what the benchmark needs: ``catalog``, ``start()``, ``errors()``, ``stop()`` and
``pids()`` (the processes whose CPU is the engine's, by component).
"""

from __future__ import annotations

from typing import Literal, Protocol

from foundation.settings import Settings
from reflux.dev import DevEngine
from reflux.processes import ProcessEngine
from streams.topics import TopicCatalog

__all__ = ["Engine", "ProcessEngine", "Topology", "build_engine"]

Topology = Literal["processes", "dev"]


class Engine(Protocol):
    catalog: TopicCatalog

    def start(self) -> object: ...

    def errors(self) -> dict[str, list[BaseException]] | dict[str, str]: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def pids(self) -> dict[str, int]: ...


class _InProcess(DevEngine):
    """``reflux dev``: the engine's CPU is this process's (counted per thread)."""

    def pids(self) -> dict[str, int]:
        return {}


def build_engine(
    topology: Topology, settings: Settings, *, schema: str, schedulers: int = 1
) -> Engine:
    if topology == "dev":
        return _InProcess(settings, schema=schema, schedulers=schedulers)
    # Scheduler k is `--instance-id bench-k`; one worker process serves every node.
    return ProcessEngine(
        settings, schema=schema, schedulers=schedulers, workers=1, instance_prefix="bench"
    )
