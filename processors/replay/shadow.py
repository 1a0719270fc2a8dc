"""The A/B replay engine: recorded runs' inputs re-run by a candidate on shadow topics and state.

A :class:`ShadowReplay` owns one shadow engine (its own topic prefix ``replay-<id>``, consumer
groups, Postgres schema and Redis cache namespace). Nodes that declare side effects are never
called again: they are answered from the original run's record (:mod:`processors.replay.recorded`)
or by the :class:`EffectPolicy`. docs/replay.md, docs/decisions/0029-shadow-replay.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from foundation.settings import Settings

EffectMode = Literal["record", "stub", "skip", "live"]
Served = Literal["executed", "record", "stub", "skip", "live"]


@dataclass(frozen=True)
class Selection:
    """Which recorded runs to replay (read from the production read model)."""

    workflow_id: str
    workflow_version: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = None
    # JMESPath on the run's inputs; a truthy result selects the run.
    inputs_filter: str | None = None
    # The newest ``sample_size`` matching runs (deterministic: ordered by start, then run id).
    sample_size: int = 100


@dataclass(frozen=True)
class Candidate:
    """What replays the inputs: a registered version, or a definition (e.g. a proposal's)."""

    workflow_version: int | None = None
    definition: dict[str, Any] | None = None
    mutation_id: str | None = None  # informational, for reports
    node_pins: Mapping[str, str] = field(default_factory=dict)  # node name -> exact version


@dataclass(frozen=True)
class EffectPolicy:
    """How side-effecting nodes are answered; "record" (the default) serves the original's
    result matched by step id + params hash and fails the step (``ReplayNoRecord``) when none
    matches. "stub" answers with ``stubs[node]``, "skip" with a null output, "live" calls it."""

    per_node: Mapping[str, EffectMode] = field(default_factory=dict)
    stubs: Mapping[str, Any] = field(default_factory=dict)

    def mode(self, node: str) -> EffectMode:
        return self.per_node.get(node, "record")


@dataclass(frozen=True)
class StepOutcome:
    step_id: str
    status: str
    attempts: int
    duration_ms: float | None
    output: Any
    served: Served
    tokens: int | None
    calls: int


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str
    outputs: Any
    error_class: str | None
    duration_ms: float | None
    steps: Mapping[str, StepOutcome]


@dataclass(frozen=True)
class ReplayPair:
    original: RunOutcome
    candidate: RunOutcome


class ShadowReplay:
    """Context manager; :meth:`close` removes the shadow topics, groups, schema, cache keys."""

    def __init__(
        self,
        settings: Settings,
        replay_id: str,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        raise NotImplementedError

    def select(self, selection: Selection) -> list[str]:
        """Original run ids, newest first, at most ``selection.sample_size``."""
        raise NotImplementedError

    def run(
        self,
        run_ids: Sequence[str],
        candidate: Candidate,
        policy: EffectPolicy = EffectPolicy(),
    ) -> list[ReplayPair]:
        """Replay each run's inputs with the candidate; one pair per run id, in order.
        ``progress(done, total)`` is called as candidate runs finish."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> ShadowReplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
