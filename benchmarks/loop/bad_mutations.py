"""Scenario 5 of ``make bench-loop``: 50 deliberately bad mutations; the canary judge must roll
every one back (promoted <= 1, each within 50 runs), plus ``proposal_to_canary_p95_s``.

Three parts (docs/learning.md, section "Canary"; ADR 0033):

1. **live** (the real engine: a ``DevEngine`` with the canary judge on its own topic prefix and
   Postgres schema, two local HTTP services of 20 ms and 250 ms): three workflows, each a GET of
   the fast service then a JMESPath ``transform`` of the run's input. Policy ``auto``, no replay
   validation: the bad mutations are *injected* past the replay gate on purpose, to measure the
   last gate (the canary). They cycle through three kinds:
   ``breaks_half`` (the transform fails on the half of the inputs that are strings),
   ``breaks_all`` (an expression that fails on every input, ``abs(to_string(x))``),
   ``slow_250ms`` (the GET goes to a 250 ms service instead of 20 ms; see docs/learning.md for
   the 80 ms variant). Each is applied as a 20 % canary; traffic runs until the judge has
   decided, then the next mutation of that workflow is proposed. Two traffic shapes: **steady**
   (8 runs/s per workflow, started one by one: live traffic) and **bursts** (10 runs per
   workflow started at once and waited for: a stress shape whose queueing spreads the run
   latencies, so latency regressions take longer to see; full mode only).
   Per mutation: the decision (and the judge's reason: which test decided), the **canary
   runs** the judge had seen when it decided (finished runs of the bad version, in the order
   they finished: what "within 50 runs" counts; runs not finished at the decision are not in
   it), the total runs of both versions it judged, and the runs the driver started (both
   versions, up to the moment it saw the decision). A mutation still ``applied`` after
   :data:`MAX_ROUNDS` batches of runs is counted as undecided and rolled back by hand
   (``user:bench``), so the workflow's next proposal can be applied.
2. **proposal_to_canary**: on a second engine *with* replay validation (the real path: static
   checks, A/B replay of the recorded runs, ``validated``, policy ``auto`` approves, version
   registered, route written), one proposal per workflow published on ``reflux.mutations`` (as
   the optimizer does; no LLM anywhere) after 20 recorded runs; the time from the publish to
   the ``applied`` record (its ``occurred_at``), and where it went (static checks, replay,
   approval).
3. **simulated** (per seed, pure, fast): the judge on synthetic runs, 50 bad mutations of random
   kind and size (failure rate 30-60 %, p95 x1.5-3, cost x1.3-2) and 50 neutral ones: promoted
   bad ones, canary runs to rollback, neutral ones rolled back by mistake. This is where the
   seeds are: the live part is one engine session.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import psycopg

from benchmarks.loop.common import engine_session, register_auto
from benchmarks.worker_io_bench import slow_service
from foundation.settings import Settings, get_settings
from processors.canary.judge import RunObservation, first_decision
from processors.mutations.validation import ReplayValidation
from projections.postgres.identifiers import table
from reflux.dev import DevEngine
from schemas.models import (
    GraphMutation,
    GraphMutationType,
    MutationAction,
    MutationRequest,
    StartRun,
)
from streams.producer import Producer

__all__ = ["run"]

GOAL_PROMOTED: Final = 1
GOAL_RUNS: Final = 50
GOAL_PROPOSAL_S: Final = 5.0
KINDS: Final = ("breaks_half", "breaks_all", "slow_250ms")
SLOW_MS: Final = 250
BATCH: Final = 10
STEADY_RATE: Final = 8.0
"""Runs per second per workflow in the steady-traffic mode (24/s over three workflows)."""
MAX_ROUNDS: Final = 60
"""Batches per mutation before it counts as undecided (600 runs: far past the horizon)."""


def _progress(message: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] bad_mutations: {message}", flush=True)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


# -- the engine session -----------------------------------------------------------------------


@dataclass
class _Session:
    settings: Settings
    schema: str
    engine: DevEngine
    producer: Producer
    conn: psycopg.Connection[Any]

    def send(self, topic: str, key: str, record: Any) -> None:
        self.producer.send(topic, key, record)

    def register(self, definition: dict[str, Any]) -> str:
        return register_auto(self.producer, self.engine.catalog, definition)

    def request(self, request: MutationRequest) -> float:
        """Publishes a mutation request; the wall time it was flushed."""
        self.send(self.engine.catalog.mutations.topic, request.workflow_id, request)
        self.producer.flush(10)
        return time.time()

    def start(self, workflow_id: str, inputs: list[Any]) -> list[str]:
        run_ids = []
        for x in inputs:
            run_id = str(uuid.uuid4())
            self.send(
                self.engine.catalog.commands.topic,
                run_id,
                StartRun(run_id=run_id, workflow_id=workflow_id, inputs={"item": {"x": x}}),
            )
            run_ids.append(run_id)
        self.producer.flush(10)
        return run_ids

    def wait_finished(self, run_ids: list[str], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            row = self.conn.execute(
                f"SELECT count(*) FROM {table(self.schema, 'runs')} WHERE run_id = ANY(%s) "
                "AND status IN ('succeeded', 'failed', 'cancelled')",
                (run_ids,),
            ).fetchone()
            if row is not None and row[0] >= len(run_ids):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(run_ids) - (row[0] if row else 0)} runs not finished")
            errors = self.engine.errors()
            if errors:
                raise RuntimeError(f"engine component failed: {errors}")
            time.sleep(0.05)  # polling the read model (benchmark driver, not a test)

    def give_up(self, mutation_id: str, workflow_id: str, timeout: float = 60.0) -> None:
        """Rolls an undecided canary back (actor ``user:bench``) and waits for it to land."""
        self.request(
            MutationRequest(
                workflow_id=workflow_id,
                mutation_id=mutation_id,
                action=MutationAction.ROLLBACK,
                actor="user:bench",
                reason="benchmark: undecided at the cap",
            )
        )
        deadline = time.monotonic() + timeout
        while (state := self.proposal(mutation_id)) is not None and state[0] == "applied":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{mutation_id} still applied {timeout:g} s after a rollback")
            time.sleep(0.05)  # polling the read model (benchmark driver)

    def proposal(self, mutation_id: str) -> tuple[str, Any] | None:
        row = self.conn.execute(
            f"SELECT status, report FROM {table(self.schema, 'mutation_proposals')} "
            "WHERE mutation_id = %s",
            (mutation_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def transitions(self, mutation_id: str) -> dict[str, datetime]:
        rows = self.conn.execute(
            f"SELECT status, occurred_at FROM {table(self.schema, 'mutation_events')} "
            "WHERE mutation_id = %s ORDER BY position",
            (mutation_id,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}


@contextlib.contextmanager
def _session(base: Settings, tag: str, **engine: Any) -> Iterator[_Session]:
    settings = base.model_copy(update={"topic_prefix": f"bench-canary-{tag}"})
    schema = f"bench_canary_{tag}"
    with engine_session(settings, schema, "bench-canary", **engine) as (dev, producer, conn):
        yield _Session(settings, schema, dev, producer, conn)


def _workflow(workflow_id: str, fast_url: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"item": {"type": "object", "required": True}},
        "steps": [
            {"id": "fetch", "node": "http.request@^1", "params": {"url": f"{fast_url}/item"}},
            {
                "id": "shape",
                "node": "transform@^1",
                "params": {"expression": "value.x", "data": {"value": "{{ inputs.item }}"}},
                "needs": ["fetch"],
            },
        ],
        "outputs": {"result": "{{ steps.shape.output.result }}"},
    }


def _fixable(workflow_id: str) -> dict[str, Any]:
    return {
        "id": workflow_id,
        "inputs": {"item": {"type": "object", "required": True}},
        "steps": [
            {
                "id": "shape",
                "node": "transform@^1",
                "params": {"expression": "abs(value.x)", "data": {"value": "{{ inputs.item }}"}},
            }
        ],
        "outputs": {"result": "{{ steps.shape.output.result }}"},
    }


def _bad_change(kind: str, slow_url: str) -> GraphMutation:
    if kind == "slow_250ms":
        return GraphMutation(
            type=GraphMutationType.UPDATE_PARAMS,
            step_id="fetch",
            data={"url": f"{slow_url}/item"},
        )
    # Both parse (the static checks pass); abs() of a string fails when it runs.
    expression = "abs(value.x)" if kind == "breaks_half" else "abs(to_string(value.x))"
    return GraphMutation(
        type=GraphMutationType.UPDATE_PARAMS,
        step_id="shape",
        data={"expression": expression, "data": {"value": "{{ inputs.item }}"}},
    )


def _traffic(rng: random.Random) -> list[Any]:
    # Half numbers, half strings: breaks_half's abs() fails on the strings.
    return [
        rng.randint(-50, 50) if rng.random() < 0.5 else f"s{rng.randint(0, 99)}"
        for _ in range(BATCH)
    ]


@dataclass
class _Open:
    workflow_id: str
    mutation_id: str
    kind: str
    published: float
    runs: int = 0
    rounds: int = 0


@dataclass
class _LiveResult:
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    apply_s: list[float] = field(default_factory=list)


def _record(s: _Session, o: _Open, status: str, report: Any, result: _LiveResult) -> None:
    canary = (report or {}).get("canary") or {}
    judge = s.engine.canary
    watch = None if judge is None else judge.watching.get(o.mutation_id)
    last = None if watch is None or watch.last is None else watch.last
    moments = s.transitions(o.mutation_id)
    if "applied" in moments:
        result.apply_s.append(moments["applied"].timestamp() - o.published)
    effect = canary.get("effect", {})
    result.outcomes.append(
        {
            "mutation_id": o.mutation_id,
            "kind": o.kind,
            "status": status,
            "canary_runs": canary.get("canary_runs"),
            "judged_runs": (canary.get("canary_runs") or 0) + (canary.get("baseline_runs") or 0),
            "runs_started": o.runs,
            "effect": effect.get("change"),
            "reason": canary.get("reason"),
            "p95_ms": {arm: effect.get(arm, {}).get("p95_ms") for arm in ("baseline", "canary")},
            "undecided_because": None if status != "applied" or last is None else last.reason,
        }
    )


PENDING: Final = frozenset({"proposed", "validating", "validated", "approved"})


def _live(
    base: Settings, mutations: int, workflows: int, seed: int, *, steady_rate: float | None
) -> _LiveResult:
    """``steady_rate``: runs per second per workflow, started one by one (live traffic);
    ``None``: bursts of :data:`BATCH` runs per workflow, each waited for."""
    rng = random.Random(seed)
    result = _LiveResult()
    with (
        slow_service(20) as fast,
        slow_service(SLOW_MS) as slow,
        _session(
            base, uuid.uuid4().hex[:8], canary=True, proposal_replay=None, replay_runner=False
        ) as s,
    ):
        ids = [s.register(_workflow(f"bad{w}", fast)) for w in range(workflows)]
        s.wait_finished(s.start(ids[0], [1]))  # warm-up: topics, consumers, workflow views
        todo = [KINDS[i % len(KINDS)] for i in range(mutations)]
        open_: dict[str, _Open] = {}
        began = time.monotonic()

        def propose(workflow_id: str) -> None:
            kind = todo.pop(0)
            mutation_id = f"bad-{len(result.outcomes) + len(open_)}-{kind}-{uuid.uuid4().hex[:6]}"
            published = s.request(
                MutationRequest(
                    workflow_id=workflow_id,
                    mutation_id=mutation_id,
                    action=MutationAction.PROPOSE,
                    actor="optimizer:bench",
                    base_version=1,
                    changes=[_bad_change(kind, slow)],
                    rationale=f"deliberately bad: {kind}",
                )
            )
            open_[workflow_id] = _Open(workflow_id, mutation_id, kind, published)

        def settle(o: _Open, cap_reached: bool) -> bool:
            """Records a decided (or given up) mutation and proposes the next one."""
            state = s.proposal(o.mutation_id)
            if state is None or state[0] in PENDING:
                return False
            if state[0] == "applied" and not cap_reached:
                return False
            _record(s, o, state[0], state[1], result)
            if state[0] == "applied":
                # Undecided at the cap (counted as such): roll it back by hand, as a person
                # would, else the workflow's next proposal is never applied (one canary per
                # workflow) and the run never ends.
                s.give_up(o.mutation_id, o.workflow_id)
            del open_[o.workflow_id]
            if todo:
                propose(o.workflow_id)
            return True

        for workflow_id in ids:
            if todo:
                propose(workflow_id)
        if steady_rate is None:
            while open_:
                batch: dict[str, list[str]] = {}
                for o in open_.values():
                    state = s.proposal(o.mutation_id)
                    if state is not None and state[0] == "applied":
                        batch[o.workflow_id] = s.start(o.workflow_id, _traffic(rng))
                for run_ids in batch.values():
                    s.wait_finished(run_ids)
                for o in list(open_.values()):
                    if o.workflow_id in batch:
                        o.runs += BATCH
                        o.rounds += 1
                    settle(o, o.rounds >= MAX_ROUNDS)
                if not batch and open_:
                    time.sleep(0.05)  # proposals on their way to applied
        else:
            interval = 1.0 / steady_rate
            applied: set[str] = set()
            next_at = dict.fromkeys(ids, time.monotonic())
            checked = 0.0
            while open_:
                now = time.monotonic()
                if now - checked >= 0.25:
                    checked = now
                    applied.clear()
                    for o in list(open_.values()):
                        if not settle(o, o.runs >= BATCH * MAX_ROUNDS):
                            state = s.proposal(o.mutation_id)
                            if state is not None and state[0] == "applied":
                                applied.add(o.mutation_id)
                for o in list(open_.values()):
                    if o.mutation_id in applied and now >= next_at[o.workflow_id]:
                        s.start(o.workflow_id, _traffic(rng)[:1])
                        o.runs += 1
                        # Keep the rate; a late start does not bunch the next ones up.
                        next_at[o.workflow_id] = max(next_at[o.workflow_id] + interval, now)
                time.sleep(0.005)  # pacing the arrivals (benchmark driver)
        mode = "bursts" if steady_rate is None else f"steady {steady_rate:g}/s per workflow"
        _progress(
            f"live ({mode}): {len(result.outcomes)} bad mutations judged in "
            f"{time.monotonic() - began:.0f}s"
        )
    return result


def _proposal_to_canary(base: Settings, proposals: int, recorded: int) -> dict[str, Any]:
    """Publish -> applied with replay validation, one proposal at a time (fresh workflows)."""
    totals: list[float] = []
    replay: list[float] = []
    approve: list[float] = []
    with _session(
        base,
        uuid.uuid4().hex[:8],
        canary=False,
        proposal_replay=ReplayValidation(sample_size=50),
    ) as s:
        # Transform only (a second engine in this process cannot use http.request: its client
        # pool is bound to the first engine's event loop). Version 1 fails on strings, so the
        # proposal (the fix) replays ``better``.
        ids = [s.register(_fixable(f"p2c{w}")) for w in range(proposals)]
        s.producer.flush(10)
        rng = random.Random(5)
        run_ids = [
            r
            for w in ids
            for r in s.start(w, [v for _ in range(recorded // BATCH) for v in _traffic(rng)])
        ]
        s.wait_finished(run_ids, timeout=300)
        for workflow_id in ids:
            mutation_id = f"fix-{workflow_id}-{uuid.uuid4().hex[:6]}"
            published = s.request(
                MutationRequest(
                    workflow_id=workflow_id,
                    mutation_id=mutation_id,
                    action=MutationAction.PROPOSE,
                    actor="optimizer:bench",
                    base_version=1,
                    changes=[
                        GraphMutation(
                            type=GraphMutationType.UPDATE_PARAMS,
                            step_id="shape",
                            data={"expression": "value.x", "data": {"value": "{{ inputs.item }}"}},
                        )
                    ],
                    rationale="fix: abs() fails on strings",
                )
            )
            deadline = time.monotonic() + 120
            while True:
                state = s.proposal(mutation_id)
                if state is not None and state[0] in {"applied", "rejected"}:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{mutation_id} not applied within 120 s: {state}")
                time.sleep(0.02)  # polling the read model (benchmark driver)
            if state[0] != "applied":
                raise RuntimeError(f"{mutation_id} was rejected: {state[1]}")
            t = s.transitions(mutation_id)
            totals.append(t["applied"].timestamp() - published)
            replay.append((t["validated"] - t["validating"]).total_seconds())
            approve.append((t["applied"] - t["validated"]).total_seconds())
    return {
        "proposals": proposals,
        "recorded_runs_per_workflow": recorded,
        "p50_s": round(statistics.median(totals), 3),
        "p95_s": round(_pct(totals, 95) or 0.0, 3),
        "max_s": round(max(totals), 3),
        "replay_p50_s": round(statistics.median(replay), 3),
        "validated_to_applied_p50_s": round(statistics.median(approve), 3),
        "each_s": [round(t, 3) for t in totals],
        "replay_each_s": [round(t, 3) for t in replay],
    }


# -- the simulated part -----------------------------------------------------------------------


def _simulated_runs(
    rng: random.Random, fail: float, latency: float, cost: float, n: int = 1500
) -> list[RunObservation]:
    out = []
    for i in range(n):
        canary = rng.random() < 0.2
        ok = rng.random() >= (fail if canary else 0.01)
        duration = 100.0 * math.exp(rng.gauss(0.0, 0.3)) * (latency if canary else 1.0)
        spent = rng.gauss(500.0, 50.0) * (cost if canary else 1.0)
        out.append(RunObservation(str(i), canary, ok, duration, spent))
    return out


def _simulate(seed: int, count: int) -> dict[str, Any]:
    rng = random.Random(seed)
    runs_to_rollback: list[float] = []
    promoted = 0
    for _ in range(count):
        kind = rng.choice(("fail", "latency", "cost"))
        fail = rng.uniform(0.3, 0.6) if kind == "fail" else 0.01
        latency = rng.uniform(1.5, 3.0) if kind == "latency" else 1.0
        cost = rng.uniform(1.3, 2.0) if kind == "cost" else 1.0
        _, verdict = first_decision(_simulated_runs(rng, fail, latency, cost))
        if verdict.decision == "rollback":
            runs_to_rollback.append(verdict.canary_runs)
        else:
            promoted += 1
    false_rollbacks = 0
    for _ in range(count):
        _, verdict = first_decision(_simulated_runs(rng, 0.01, 1.0, 1.0))
        false_rollbacks += verdict.decision == "rollback"
    return {
        "bad": count,
        "promoted": promoted,
        "rolled_back_within_50": sum(r <= GOAL_RUNS for r in runs_to_rollback),
        "canary_runs_to_rollback_median": statistics.median(runs_to_rollback),
        "canary_runs_to_rollback_max": max(runs_to_rollback),
        "neutral": count,
        "neutral_rolled_back": false_rollbacks,
    }


# -- the scenario -----------------------------------------------------------------------------


def run(seeds: list[int], quick: bool) -> dict[str, Any]:
    base = get_settings()
    count = 10 if quick else 50
    per_seed: dict[str, Any] = {}
    for seed in seeds if not quick else seeds[:2]:
        _progress(f"simulated seed {seed}: {count} bad + {count} neutral canaries")
        per_seed[str(seed)] = {"simulated": _simulate(seed, count)}

    _progress(f"live: {count} bad mutations, steady traffic ({STEADY_RATE:g} runs/s per workflow)")
    steady = _summary(_live(base, count, workflows=3, seed=seeds[0], steady_rate=STEADY_RATE))
    bursts = None
    if not quick:
        _progress(f"live: {count} bad mutations, bursts of {BATCH} runs per workflow")
        bursts = _summary(_live(base, count, workflows=3, seed=seeds[0], steady_rate=None))
    _progress("proposal -> canary with replay validation")
    # As many recorded runs as the replay samples by default (50) outside quick mode.
    p2c = _proposal_to_canary(base, proposals=4 if quick else 10, recorded=20 if quick else 50)
    goals = []
    for mode, summary in (("steady", steady), ("bursts", bursts)):
        if summary is None:
            continue
        goals += [
            {
                "name": f"bad mutations promoted (live, {mode} traffic)",
                "target": f"<= {GOAL_PROMOTED} of {summary['bad_mutations']}",
                "value": summary["promoted"],
                "met": summary["promoted"] <= GOAL_PROMOTED,
            },
            {
                "name": f"each bad mutation rolled back within 50 canary runs (live, {mode})",
                "target": f"<= {GOAL_RUNS}",
                "value": summary["canary_runs_to_rollback_max"],
                "met": summary["rolled_back_within_50"] == summary["bad_mutations"],
            },
        ]
    goals.append(
        {
            "name": "proposal_to_canary_p95_s (replay validation included, no LLM)",
            "target": f"<= {GOAL_PROPOSAL_S}",
            "value": p2c["p95_s"],
            "met": p2c["p95_s"] <= GOAL_PROPOSAL_S,
        }
    )
    return {
        "per_seed": per_seed,
        "live_steady": steady,
        "live_bursts": bursts,
        "proposal_to_canary": p2c,
        "proposal_to_canary_p95_s": p2c["p95_s"],
        "goals": goals,
    }


def _summary(live: _LiveResult) -> dict[str, Any]:
    bad = live.outcomes
    rolled = [o for o in bad if o["status"] == "rolled_back"]
    canary_runs = [float(o["canary_runs"]) for o in rolled]
    judged = [float(o["judged_runs"]) for o in rolled]

    def kind_runs(kind: str) -> list[float]:
        return [float(o["canary_runs"]) for o in rolled if o["kind"] == kind] or [0.0]

    return {
        "bad_mutations": len(bad),
        "promoted": sum(o["status"] == "kept" for o in bad),
        "undecided": sum(o["status"] == "applied" for o in bad),
        "rolled_back": len(rolled),
        "rolled_back_within_50": sum(r <= GOAL_RUNS for r in canary_runs),
        "canary_runs_to_rollback_median": statistics.median(canary_runs) if canary_runs else None,
        "canary_runs_to_rollback_max": max(canary_runs) if canary_runs else None,
        "judged_runs_to_rollback_median": statistics.median(judged) if judged else None,
        "judged_runs_to_rollback_max": max(judged) if judged else None,
        "by_kind": {
            kind: {
                "count": sum(o["kind"] == kind for o in bad),
                "promoted": sum(o["kind"] == kind and o["status"] == "kept" for o in bad),
                "canary_runs_median": statistics.median(kind_runs(kind)),
                "canary_runs_max": max(kind_runs(kind)),
            }
            for kind in KINDS
        },
        "proposal_to_applied_no_replay_p95_s": round(_pct(live.apply_s, 95) or 0.0, 3),
        "mutations": bad,
    }


if __name__ == "__main__":
    import json
    import sys

    quick = "--quick" in sys.argv
    print(json.dumps(run([1, 2, 3], quick), indent=2, default=str))
