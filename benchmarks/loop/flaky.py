"""Scenario 2 of ``make bench-loop``: a flaky dependency, on the real engine.

One workflow calls a local HTTP dependency (:func:`benchmarks.loop.stubs.dependency_stub`,
its own process). Runs start at a steady rate (:data:`RATE_PER_S`). For the first
:data:`BEFORE` runs the dependency is healthy-ish (:data:`PROFILE_BEFORE`: lognormal latency,
median 20 ms, 2% errors); when run number ``BEFORE`` is submitted the driver switches it
(``POST /_stub/control``) to :data:`PROFILE_AFTER`: 30% errors (503) and 3% of requests hanging
5 s. Attempts still in flight at the switch may see either profile; runs are counted from the
switch by their submission order.

Configurations, each on a fresh engine (``DevEngine`` with its own topic prefix
``bench-loop-flaky-<uuid8>`` and Postgres schema, both removed afterwards) and a fresh stub:

- ``static``: the workflow as first written (:func:`workflow` ``"static"``): one
  ``http.request``, no retry, the node's default 30 s timeout;
- ``hand``: the best configuration chosen by hand, knowing the fault: 6 attempts (failure odds
  ``0.33^6`` ≈ 0.13%), backoff 50 ms doubling to 1 s with equal jitter, a 1 s step timeout and
  ``timeout_s: 1`` on the request so a hang costs one second and is retried;
- ``loop``: the static workflow with improvement policy ``auto`` on an engine with the learning
  loop on (:data:`LOOP_ENGINE_OPTIONS`: the critic, optimizer and canary keywords of
  ``DevEngine``). It runs when ``loop=True`` (``--loop``), or with ``loop=None`` (the default)
  when ``DevEngine`` accepts those keywords; until the critic, optimizer and canary branches
  are merged it is reported as not available.

Per configuration and seed: success rate before the change, after it (overall, per window of
:data:`WINDOW` runs, and over the runs from :data:`GOAL_RUNS` after the change on:
``success_after_goal``), ``recovered_at_runs`` (the first multiple of ``WINDOW/2`` runs after the
change from which every 100-run window has >= 99% success; ``null`` = never), the runs' duration
p50/p95, dependency requests per run, and for ``loop`` the mutations proposed / applied / kept /
rolled back (``GET /v1/mutations``) and the run index at which the first new version served.
Goal (issue 11): ``loop`` success >= 99% within 300 runs of the change, at most 3 mutations.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg

from benchmarks.cleanup import delete_prefix_topics, drop_engine_schemas
from benchmarks.loop.common import percentile, progress, until
from benchmarks.loop.stubs import StubProcess, dependency_stub
from foundation.settings import Settings, get_settings
from projections.postgres.identifiers import table

__all__ = ["CONFIGS", "LOOP_ENGINE_OPTIONS", "loop_available", "loop_options", "run", "workflow"]

SCENARIO: Final = "flaky"
CONFIGS: Final = ("static", "hand", "loop")
LOOP_ENGINE_OPTIONS: Final[dict[str, Any]] = {"critic": True, "optimizer": True, "canary": True}
"""The DevEngine keywords that turn the learning loop on (branches critic, optimizer, canary)."""
OPTIONAL_LOOP_OPTIONS: Final[dict[str, Any]] = {"historian": True}
"""Passed too when DevEngine has them: the historian's store, which the optimizer asks first."""
PROFILE_BEFORE: Final[dict[str, Any]] = {"median_ms": 20, "sigma": 0.3, "error_rate": 0.02}
PROFILE_AFTER: Final[dict[str, Any]] = {"error_rate": 0.30, "hang_share": 0.03, "hang_s": 5.0}
BEFORE: Final = {True: 100, False: 200}
AFTER: Final = {True: 400, False: 600}
RATE_PER_S: Final = 10.0
"""Runs started per second, every configuration: 300 runs after the change are 30 s in which the
loop detects, proposes, validates by replay and canaries (the baselines do not depend on it)."""
WINDOW: Final = 50
GOAL_RUNS: Final = 300
GOAL_SUCCESS: Final = 0.99
GOAL_MUTATIONS: Final = 3
DRAIN_TIMEOUT_S: Final = 180.0
WORKFLOW_ID: Final = "flaky-dep"


def workflow(config: str, url: str) -> dict[str, Any]:
    """The workflow of one configuration (``static`` is also where ``loop`` starts)."""
    call: dict[str, Any] = {
        "id": "call",
        "node": "http.request@^1",
        "params": {"url": f"{url}/quote", "method": "GET"},
    }
    if config == "hand":
        call["params"]["timeout_s"] = 1
        call["timeout"] = "1s"
        call["retry"] = {
            "max_attempts": 6,
            "initial_backoff": "50ms",
            "max_backoff": "1s",
            "multiplier": 2,
            "jitter": 0.5,
        }
    return {
        "id": WORKFLOW_ID,
        "description": f"bench-loop scenario 2 ({config})",
        "steps": [
            call,
            {
                "id": "shape",
                "node": "transform@^1",
                "needs": ["call"],
                "params": {"expression": "n", "data": {"n": "{{ steps.call.output.body.n }}"}},
            },
        ],
        "outputs": {"n": "{{ steps.shape.output.result }}"},
    }


def _engine_parameters() -> set[str]:
    from reflux.dev import DevEngine

    return set(inspect.signature(DevEngine.__init__).parameters)


def loop_available() -> bool:
    """Whether ``DevEngine`` takes the loop's keywords (the critic/optimizer/canary merged)."""
    return set(LOOP_ENGINE_OPTIONS) <= _engine_parameters()


def loop_options() -> dict[str, Any]:
    """The keywords the loop configuration starts its DevEngine with."""
    known = _engine_parameters()
    optional = {k: v for k, v in OPTIONAL_LOOP_OPTIONS.items() if k in known}
    return {**LOOP_ENGINE_OPTIONS, **optional}


@dataclass
class Outcome:
    statuses: list[str]
    versions: list[int]
    durations_ms: list[float]
    requests: int
    errors: list[str | None] = field(default_factory=list)
    """The error class of each failed run (``None`` for the others), in run order."""
    mutations: dict[str, Any] = field(default_factory=dict)


def _window_rates(ok: list[bool], size: int) -> list[float]:
    return [sum(ok[i : i + size]) / len(ok[i : i + size]) for i in range(0, len(ok), size)]


def recovered_at(ok_after: list[bool], window: int = 100, step: int = WINDOW // 2) -> int | None:
    """First multiple of ``step`` runs after the change from which every ``window``-run window
    (sliding by ``step``) succeeds at >= 99%; ``None`` when it never does."""
    starts = list(range(0, max(len(ok_after) - window, 0) + 1, step))
    good = [sum(ok_after[s : s + window]) / window >= GOAL_SUCCESS for s in starts]
    for i, start in enumerate(starts):
        if all(good[i:]):
            return start
    return None


def summarize_outcome(outcome: Outcome, before: int) -> dict[str, Any]:
    ok = [s == "succeeded" for s in outcome.statuses]
    after = ok[before:]
    tail = ok[before + GOAL_RUNS :]
    result: dict[str, Any] = {
        "runs": len(ok),
        "success_before": sum(ok[:before]) / before,
        "success_after": sum(after) / len(after),
        "success_after_goal": sum(tail) / len(tail) if tail else None,
        "success_after_windows": _window_rates(after, WINDOW),
        "recovered_at_runs": recovered_at(after),
        "run_ms_p50": statistics.median(outcome.durations_ms) if outcome.durations_ms else None,
        "run_ms_p95": percentile(outcome.durations_ms, 95) if outcome.durations_ms else None,
        "requests_per_run": outcome.requests / len(ok),
        "failed_runs_after": len(after) - sum(after),
        "error_classes_before": _count(outcome.errors[:before]),
        "error_classes_after": _count(outcome.errors[before:]),
    }
    if outcome.mutations:
        result["mutations"] = outcome.mutations
        upgraded = [i for i, v in enumerate(outcome.versions) if v > 1]
        result["first_new_version_run"] = upgraded[0] - before if upgraded else None
    return result


def _count(errors: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for error in errors:
        if error is not None:
            counts[error] = counts.get(error, 0) + 1
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def _engine(settings: Settings, schema: str, loop: bool) -> Iterator[Any]:
    from reflux.dev import DevEngine

    if loop and not loop_available():
        raise RuntimeError(
            f"DevEngine has no {sorted(LOOP_ENGINE_OPTIONS)} keywords yet: merge the critic, "
            "optimizer and canary branches to run the loop configuration"
        )
    options = loop_options() if loop else {}
    engine = DevEngine(settings, schema=schema, trigger_router=False, **options).start()
    try:
        yield engine
    finally:
        engine.stop()


Row = tuple[str, int, float, str | None]
"""status, workflow version, duration ms, error class."""


def _statuses(conn: Any, schema: str, run_ids: list[str]) -> dict[str, Row]:
    rows = conn.execute(
        f"SELECT run_id, status, workflow_version, "
        f"EXTRACT(EPOCH FROM (finished_at - started_at)) * 1000, error->>'error_class' "
        f"FROM {table(schema, 'runs')} WHERE run_id = ANY(%s)",
        (run_ids,),
    ).fetchall()
    return {r[0]: (r[1], int(r[2]), float(r[3]) if r[3] is not None else 0.0, r[4]) for r in rows}


TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})


def _drive(
    config: str, seed: int, quick: bool, settings: Settings, schema: str, dep: StubProcess
) -> Outcome:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth.bootstrap import bearer_headers
    from api.config import ApiSettings
    from schemas.models import StartRun
    from streams.producer import Producer

    loop = config == "loop"
    before, total = BEFORE[quick], BEFORE[quick] + AFTER[quick]
    api_settings = ApiSettings(
        read_schema=schema, api_schema=f"{schema}_api", clickhouse_enabled=False
    )
    with (
        _engine(settings, schema, loop) as engine,
        TestClient(
            create_app(settings, api_settings),
            headers=bearer_headers(settings, api_settings, name="bench", created_by="benchmark"),
        ) as api,
        Producer(settings, client_id="bench-loop-flaky") as producer,
        psycopg.connect(settings.postgres_dsn, autocommit=True) as conn,
    ):
        definition = workflow("static" if loop else config, dep.url)
        created = api.post("/v1/workflows", json=definition)
        if created.status_code != 201:
            raise RuntimeError(f"register: {created.status_code} {created.text[:300]}")
        until(
            lambda: api.get(f"/v1/workflows/{WORKFLOW_ID}").status_code == 200,
            30,
            "the workflow in the read model",
        )
        if loop:
            answer = api.put(f"/v1/workflows/{WORKFLOW_ID}/improvement", json={"policy": "auto"})
            if answer.status_code not in (200, 202):
                raise RuntimeError(f"improvement: {answer.status_code} {answer.text[:300]}")
        run_ids = [f"flaky-{config}-{seed}-{i:05d}-{uuid.uuid4().hex[:6]}" for i in range(total)]
        began = time.monotonic()
        for i, run_id in enumerate(run_ids):
            if i == before:
                dep.control(profile=PROFILE_AFTER)
                progress(SCENARIO, f"{config} seed {seed}: dependency degraded at run {i}")
            # Steady arrivals, like traffic: never wait for runs to finish.
            delay = began + i / RATE_PER_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(
                engine.catalog.commands,
                run_id,
                StartRun(run_id=run_id, workflow_id=WORKFLOW_ID, inputs={}),
            )
            if i % 100 == 99:
                producer.flush(10)
                progress(SCENARIO, f"{config} seed {seed}: {i + 1}/{total} runs started")
        producer.flush(10)

        def finished() -> dict[str, Row] | None:
            rows = _statuses(conn, schema, run_ids)
            done = sum(1 for row in rows.values() if row[0] in TERMINAL)
            return rows if done == total else None

        rows = until(finished, DRAIN_TIMEOUT_S, f"{total} runs to end", interval=0.5)
        mutations: dict[str, Any] = {}
        if loop:
            listed = api.get("/v1/mutations", params={"workflow_id": WORKFLOW_ID, "limit": 100})
            if listed.status_code != 200:
                raise RuntimeError(f"mutations: {listed.status_code} {listed.text[:300]}")
            items = listed.json()["data"]
            by_status: dict[str, int] = {}
            for item in items:
                by_status[str(item.get("status"))] = by_status.get(str(item.get("status")), 0) + 1
            mutations = {
                "proposed": len(items),
                "by_status": by_status,
                "strategies": sorted({str(i.get("author")) for i in items}),
                "timeline": [_mutation_timeline(api, str(i["mutation_id"])) for i in items],
            }
        requests = int(dep.stats()["requests"])
    return Outcome(
        statuses=[rows[r][0] for r in run_ids],
        versions=[rows[r][1] for r in run_ids],
        durations_ms=[rows[r][2] for r in run_ids],
        requests=requests,
        errors=[rows[r][3] for r in run_ids],
        mutations=mutations,
    )


def _mutation_timeline(api: Any, mutation_id: str) -> dict[str, Any]:
    """What happened to one proposal, and why (the lifecycle's reasons, shortened)."""
    answer = api.get(f"/v1/mutations/{mutation_id}")
    if answer.status_code != 200:
        return {"mutation_id": mutation_id, "error": f"{answer.status_code}"}
    detail = answer.json()
    return {
        "mutation_id": mutation_id,
        "author": detail.get("author"),
        "status": detail.get("status"),
        "history": [
            {"status": h.get("status"), "reason": (h.get("reason") or "")[:300]}
            for h in detail.get("history", [])
        ],
        "effect": detail.get("effect"),
        "changes": detail.get("changes"),
        "predicted_effect": _evidence(detail).get("predicted_effect"),
    }


def _evidence(detail: dict[str, Any]) -> dict[str, Any]:
    evidence = detail.get("evidence")  # free JSON (a jsonb column): an object for our proposals
    return evidence if isinstance(evidence, dict) else {}


def measure(config: str, seed: int, quick: bool, base: Settings | None = None) -> dict[str, Any]:
    """One configuration, one seed, on a fresh engine and stub; the summary of its runs."""
    base = base or get_settings()
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench-loop-flaky-{tag}"})
    schema = f"bench_loop_flaky_{tag}"
    progress(SCENARIO, f"{config} seed {seed}: prefix {settings.topic_prefix}, schema {schema}")
    try:
        with dependency_stub(PROFILE_BEFORE, seed=seed) as dep:
            outcome = _drive(config, seed, quick, settings, schema, dep)
    finally:
        delete_prefix_topics(settings, timeout=30)
        drop_engine_schemas(settings, schema)
    summary = summarize_outcome(outcome, BEFORE[quick])
    progress(
        SCENARIO,
        f"{config} seed {seed}: success before {summary['success_before']:.3f}, after "
        f"{summary['success_after']:.3f}, from run {GOAL_RUNS} after the change "
        f"{summary['success_after_goal']}, recovered at {summary['recovered_at_runs']}",
    )
    return summary


def run(seeds: list[int], quick: bool, loop: bool | None = None) -> dict[str, Any]:
    """The scenario for the harness; ``loop=None``: the loop column when it is available."""
    with_loop = loop_available() if loop is None else loop
    configs = [c for c in CONFIGS if c != "loop" or with_loop]
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        per_seed[str(seed)] = {config: measure(config, seed, quick) for config in configs}
    goals = [_goal(per_seed, configs)]
    return {
        "description": "flaky dependency: errors 2% -> 30% plus 3% hangs at a known run",
        "configs": configs,
        "loop": {
            "ran": with_loop,
            "switch": "benchmarks.loop.flaky.run(seeds, quick, loop=True) / --loop; DevEngine "
            f"keywords {sorted(LOOP_ENGINE_OPTIONS)} (branches critic, optimizer, canary), "
            f"plus {sorted(OPTIONAL_LOOP_OPTIONS)} when DevEngine has it",
        },
        "parameters": {
            "before": BEFORE[quick],
            "after": AFTER[quick],
            "rate_per_s": RATE_PER_S,
            "profile_before": PROFILE_BEFORE,
            "profile_after": PROFILE_AFTER,
            "window": WINDOW,
        },
        "per_seed": per_seed,
        "goals": goals,
    }


def _applied(mutations: dict[str, Any]) -> int:
    """Proposals that reached live traffic: applied, then kept or rolled back (or still on)."""
    by_status: dict[str, int] = mutations.get("by_status", {})
    return sum(by_status.get(status, 0) for status in ("applied", "kept", "rolled_back"))


def _goal(per_seed: dict[str, dict[str, Any]], configs: list[str]) -> dict[str, Any]:
    target = (
        f"loop: success >= {GOAL_SUCCESS:.0%} from {GOAL_RUNS} runs after the change, "
        f"<= {GOAL_MUTATIONS} mutations"
    )
    if "loop" not in configs:
        return {"name": "flaky_recovery", "target": target, "value": None, "met": None}
    worst = min(s["loop"]["success_after_goal"] or 0.0 for s in per_seed.values())
    # Strict reading: every proposal counts as a mutation, rejected ones included; how many
    # changed the workflow (applied as a canary) is reported beside it.
    most = max(s["loop"].get("mutations", {}).get("proposed", 0) for s in per_seed.values())
    applied = max(_applied(s["loop"].get("mutations", {})) for s in per_seed.values())
    value = {"worst_success_after_goal": worst, "most_mutations": most, "most_applied": applied}
    return {
        "name": "flaky_recovery",
        "target": target,
        "value": value,
        "met": worst >= GOAL_SUCCESS and most <= GOAL_MUTATIONS,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop.flaky", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds")
    parser.add_argument("--configs", default="", help="only these (static,hand,loop)")
    parser.add_argument("--loop", action="store_true", help="include the loop configuration")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.configs:
        results = {
            str(seed): {c: measure(c, seed, args.quick) for c in args.configs.split(",")}
            for seed in seeds
        }
        print(json.dumps(results, indent=2))
    else:
        print(json.dumps(run(seeds, args.quick, loop=True if args.loop else None), indent=2))


if __name__ == "__main__":
    main()
