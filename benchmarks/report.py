"""Goals, peer ratios and the printed table of ``make bench`` (pure, no I/O).

Ratio direction: every ``peer_<name>_*_ratio`` is "how many times better REFLUX is", so > 1
means REFLUX wins whatever the unit: peer / ours for latencies, ours / peer for throughput.
Each ratio compares like with like, which is not always our headline key (see :data:`RATIOS`):
a peer's step that runs on a worker with our remote path, one journaled by the engine itself with
our inline path (:data:`PEER_KINDS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "GOALS",
    "OUR_KEYS",
    "PEER_KINDS",
    "RATIOS",
    "Goal",
    "Ratio",
    "evaluate_goals",
    "floor_fractions",
    "format_side_by_side",
    "format_table",
    "peer_ratios",
]


@dataclass(frozen=True)
class Goal:
    key: str
    op: Literal["<", ">="]
    target: float

    def met(self, value: float) -> bool:
        return value < self.target if self.op == "<" else value >= self.target

    def __str__(self) -> str:
        return f"{self.op} {self.target:g}"


# The issues' goals (start p99 < 50 ms, step overhead p50 < 10 / p99 < 50 ms, cache hit < 5 ms,
# >= 1,000 steps/s; a scheduler restart under 2 s with 10k and with 100k finished runs in the log;
# a meta.map of 10,000 no-op items at >= 2,000 items/s; a graph mutation visible in the run's
# graph < 100 ms at p99: issue 9).
GOALS: tuple[Goal, ...] = (
    Goal("start_latency_p99_ms", "<", 50),
    Goal("step_overhead_p50_ms", "<", 10),
    Goal("step_overhead_p99_ms", "<", 50),
    Goal("cache_hit_p50_ms", "<", 5),
    Goal("steps_per_s", ">=", 1000),
    Goal("scheduler_recovery_s_10k", "<", 2),
    Goal("scheduler_recovery_s_100k", "<", 2),
    Goal("map_items_per_s", ">=", 2000),
    Goal("mutation_apply_p99_ms", "<", 100),
    # Issue 10: 1,000 recorded 10-step runs replayed within 60 s, >= 5x faster than live.
    Goal("replay_1000_runs_s", "<", 60),
    Goal("replay_speedup_vs_live", ">=", 5),
    # Issue 17: a forged node (generate, sandbox tests, register) in under a minute.
    Goal("forge_openapi_s", "<", 60),
    Goal("forge_llm_s", "<", 60),
)


@dataclass(frozen=True)
class Ratio:
    key: str
    peer: str
    ours: str
    higher_is_better: bool
    """True for throughput (ratio = ours / peer), False for latencies (ratio = peer / ours)."""


# What each peer's "step" is, and which of our two paths it compares with (ADR 0072): a step
# that leaves the engine for a worker (Temporal activity, Restate call to another service's
# handler, LittleHorse task run, Hatchet task) with our remote path; a step journaled by the
# engine itself (Restate ``ctx.run``) with our inline path.
PEER_KINDS: tuple[tuple[str, Literal["remote", "inline"]], ...] = (
    ("peer_temporal", "remote"),
    ("peer_restate", "inline"),
    ("peer_restate_call", "remote"),
    ("peer_littlehorse", "remote"),
    ("peer_hatchet", "remote"),
)

# Our key for each peer metric, per path. Peers' start latency runs until the first step
# *executes* and their step overhead is end to end (start call issued -> result) / 10, so ours
# are taken the same way. The inline path has no step that "starts executing" on a worker, so
# start latency is compared on the remote path only.
OUR_KEYS: dict[str, dict[str, str]] = {
    "remote": {
        "start_latency_p50": "start_to_first_step_p50_ms",
        "start_latency_p99": "start_to_first_step_p99_ms",
        "step_overhead_p50": "step_overhead_e2e_p50_ms",
        "step_overhead_p99": "step_overhead_e2e_p99_ms",
        "steps_per_s": "steps_per_s",
    },
    "inline": {
        "step_overhead_p50": "step_overhead_inline_p50_ms",
        "step_overhead_p99": "step_overhead_inline_p99_ms",
        "steps_per_s": "steps_per_s_inline",
    },
}


def _peer_key(prefix: str, metric: str) -> str:
    """A peer's key for one metric: milliseconds but for throughput."""
    return f"{prefix}_{metric}" + ("" if metric == "steps_per_s" else "_ms")


def _ratios() -> tuple[Ratio, ...]:
    return tuple(
        Ratio(f"{prefix}_{metric}_ratio", _peer_key(prefix, metric), ours, metric == "steps_per_s")
        for prefix, path in PEER_KINDS
        for metric, ours in OUR_KEYS[path].items()
    )


RATIOS: tuple[Ratio, ...] = _ratios()


def _usable(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def peer_ratios(results: Mapping[str, object]) -> dict[str, float]:
    """The ratios whose two inputs are both present and positive."""
    return _computed(RATIOS, results)


def _computed(ratios: tuple[Ratio, ...], results: Mapping[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for ratio in ratios:
        peer, ours = results.get(ratio.peer), results.get(ratio.ours)
        if not (_usable(peer) and _usable(ours)):
            continue
        assert isinstance(peer, int | float) and isinstance(ours, int | float)
        out[ratio.key] = ours / peer if ratio.higher_is_better else peer / ours
    return out


def evaluate_goals(results: Mapping[str, object]) -> list[tuple[Goal, float | None, bool | None]]:
    """(goal, value, met) per goal; value and met are None when the metric is missing."""
    rows: list[tuple[Goal, float | None, bool | None]] = []
    for goal in GOALS:
        value = results.get(goal.key)
        if isinstance(value, int | float):
            rows.append((goal, float(value), goal.met(float(value))))
        else:
            rows.append((goal, None, None))
    return rows


def format_table(results: Mapping[str, object]) -> str:
    """Every numeric key: value, goal and pass/miss where there is a goal."""
    goals = {g.key: g for g in GOALS}
    numeric = {k: v for k, v in results.items() if isinstance(v, int | float)}
    width = max([len(k) for k in numeric] + [6])
    lines = [f"{'metric':<{width}}  {'value':>10}  {'goal':>8}"]
    for key, value in numeric.items():
        goal = goals.get(key)
        verdict = "" if goal is None else ("ok" if goal.met(float(value)) else "MISS")
        goal_text = str(goal) if goal else ""
        lines.append(f"{key:<{width}}  {float(value):10.2f}  {goal_text:>8}  {verdict}")
    return "\n".join(lines)


_SIDE_BY_SIDE = (
    ("step_overhead_p50", "step overhead p50 (ms)"),
    ("step_overhead_p99", "step overhead p99 (ms)"),
    ("steps_per_s", "steps/s, 100 runs at once"),
    ("start_latency_p50", "start -> first step p50 (ms)"),
)


def format_side_by_side(results: Mapping[str, object]) -> str:
    """REFLUX's two paths and every peer that ran, one column each (same definitions)."""
    columns: list[tuple[str, dict[str, str]]] = [
        (f"REFLUX {path}", keys) for path, keys in OUR_KEYS.items()
    ]
    for prefix, _ in PEER_KINDS:
        keys = {metric: _peer_key(prefix, metric) for metric, _ in _SIDE_BY_SIDE}
        if any(_usable(results.get(k)) for k in keys.values()):
            columns.append((prefix.removeprefix("peer_"), keys))
    width = max(len(label) for _, label in _SIDE_BY_SIDE)
    lines = [f"{'':<{width}}" + "".join(f"  {name:>17}" for name, _ in columns)]
    for metric, label in _SIDE_BY_SIDE:
        cells = []
        for _, keys in columns:
            value = results.get(keys.get(metric, ""))
            cells.append(f"{value:17.2f}" if _usable(value) else f"{'-':>17}")
        lines.append(f"{label:<{width}}" + "".join(f"  {c}" for c in cells))
    return "\n".join(lines)


# The floor (``benchmarks/floor_bench.py``) in the place of a peer: the same step's Kafka
# traffic with no application work, so each ratio is REFLUX's fraction of the architecture's
# limit (1.0 = at the floor).
FLOOR_RATIOS: tuple[Ratio, ...] = (
    Ratio("floor_fraction_steps_per_s", "floor_steps_per_s", "steps_per_s", True),
    Ratio(
        "floor_fraction_step_overhead_p50",
        "floor_step_overhead_p50_ms",
        "step_overhead_e2e_p50_ms",
        False,
    ),
)


def floor_fractions(results: Mapping[str, object]) -> dict[str, float]:
    """REFLUX's remote path as a fraction of the floor (:data:`FLOOR_RATIOS`)."""
    return _computed(FLOOR_RATIOS, results)
