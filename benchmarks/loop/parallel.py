"""Scenario 3 of ``make bench-loop``: independent calls written in sequence, on the real engine.

Two workflows call a local HTTP dependency (:func:`benchmarks.loop.stubs.dependency_stub`,
lognormal latency, median 150 ms, sigma 0.05, no errors):

- ``par-four``: four ``http.request`` GETs ``a -> b -> c -> d``, each needing the previous one
  although none reads another's output; outputs: the four paths answered (deterministic);
- ``par-trap``: ``put`` (PUT ``/kv/<run key>`` with the run's input) then ``get`` (GET the same
  key): no template links them, but ``get`` reads what ``put`` wrote -- a hidden ordering
  dependency through a side effect; output: the value read.

Per seed, on a fresh engine (``DevEngine`` with the optimizer, its own topic prefix
``bench-loop-parallel-<uuid8>`` and Postgres schema, both removed afterwards):

1. ``before``: N runs of each workflow as written (waves of :data:`WAVE` runs at once);
2. a ``sequential_independent`` diagnosis per workflow on ``diagnoses``, with the step p50s
   measured in phase 1 as evidence (what the critic emits; this scenario feeds the optimizer
   directly so it measures the optimizer and the engine, not the critic's detection);
3. the optimizer answers: for ``par-four`` a ``parallelise`` proposal (validated by the mutation
   processor's static checks), approved with canary weight 1 (as a person would; the canary's
   own judgement is scenario 5); for ``par-trap`` nothing (the decision is recorded);
4. ``after``: N runs of each workflow again (new runs get the new version).

Reported per seed: p50/p95 run latency before/after, the p50 change (goal <= -40%), whether
every run's outputs equal the same run's outputs before (``outputs_identical``), the optimizer's
predicted change, and for the trap: proposals made (goal 0), outputs still correct; and, as a
control, the same pair with its ordering removed by hand: the share of runs whose ``get`` read
before ``put`` wrote (``trap_broken_share_when_parallel``), which shows the dependency is real.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from benchmarks.cleanup import delete_prefix_topics, drop_engine_schemas
from benchmarks.loop.common import percentile, progress, until
from benchmarks.loop.stubs import StubProcess, dependency_stub
from foundation.settings import Settings, get_settings
from projections.postgres.identifiers import table

__all__ = ["four_workflow", "run", "trap_workflow"]

SCENARIO: Final = "parallel"
FOUR: Final = "par-four"
TRAP: Final = "par-trap"
RUNS: Final = {True: 24, False: 80}
WAVE: Final = 8
PROFILE: Final = {"median_ms": 150.0, "sigma": 0.05}
TERMINAL: Final = frozenset({"succeeded", "failed", "cancelled"})


def four_workflow(url: str) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i, name in enumerate("abcd"):
        step: dict[str, Any] = {
            "id": name,
            "node": "http.request",
            "params": {"url": f"{url}/{name}", "timeout_s": 5},
        }
        if i:
            step["needs"] = ["abcd"[i - 1]]
        steps.append(step)
    return {
        "id": FOUR,
        "steps": steps,
        "outputs": {
            "paths": "{{ [steps.a.output.body.path, steps.b.output.body.path, "
            "steps.c.output.body.path, steps.d.output.body.path] }}"
        },
    }


def trap_workflow(url: str, *, ordered: bool = True, workflow_id: str = TRAP) -> dict[str, Any]:
    put = {
        "id": "put",
        "node": "http.request",
        "params": {
            "url": f"{url}/kv/{{{{ inputs.key }}}}",
            "method": "PUT",
            "json": {"v": "{{ inputs.value }}"},
            "timeout_s": 5,
        },
    }
    get: dict[str, Any] = {
        "id": "get",
        "node": "http.request",
        "params": {"url": f"{url}/kv/{{{{ inputs.key }}}}", "timeout_s": 5},
    }
    if ordered:
        get["needs"] = ["put"]
    return {
        "id": workflow_id,
        "inputs": {"key": {"type": "string"}, "value": {"type": "integer"}},
        "steps": [put, get],
        "outputs": {"read": "{{ steps.get.output.body.value.v }}"},
    }


def _runs(conn: Any, schema: str, run_ids: list[str]) -> dict[str, tuple[str, int, float, Any]]:
    rows = conn.execute(
        "SELECT run_id, status, workflow_version, "
        "EXTRACT(EPOCH FROM (finished_at - started_at)) * 1000, outputs "
        f"FROM {table(schema, 'runs')} WHERE run_id = ANY(%s)",
        (run_ids,),
    ).fetchall()
    return {r[0]: (r[1], int(r[2]), float(r[3] or 0.0), r[4]) for r in rows}


def _step_p50(conn: Any, schema: str, run_ids: list[str]) -> dict[str, float]:
    rows = conn.execute(
        f"SELECT step_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) "
        f"FROM {table(schema, 'steps')} WHERE run_id = ANY(%s) AND duration_ms IS NOT NULL "
        "GROUP BY step_id",
        (run_ids,),
    ).fetchall()
    return {r[0]: round(float(r[1]), 1) for r in rows}


class _Driver:
    def __init__(self, engine: Any, api: Any, producer: Any, conn: Any, schema: str) -> None:
        self.engine, self.api, self.producer, self.conn, self.schema = (
            engine,
            api,
            producer,
            conn,
            schema,
        )

    def register(self, definition: dict[str, Any]) -> None:
        created = self.api.post("/v1/workflows", json=definition)
        if created.status_code != 201:
            raise RuntimeError(f"register: {created.status_code} {created.text[:300]}")
        until(
            lambda: self.api.get(f"/v1/workflows/{definition['id']}").status_code == 200,
            30,
            f"{definition['id']} in the read model",
        )

    def runs(
        self, workflow_id: str, run_ids: list[str], inputs: list[dict[str, Any]]
    ) -> dict[str, tuple[str, int, float, Any]]:
        """Starts the runs in waves of WAVE (each wave waits for the previous one)."""
        from schemas.models import StartRun

        for start in range(0, len(run_ids), WAVE):
            wave = run_ids[start : start + WAVE]
            for run_id, given in zip(wave, inputs[start : start + WAVE], strict=True):
                self.producer.send(
                    self.engine.catalog.commands,
                    run_id,
                    StartRun(run_id=run_id, workflow_id=workflow_id, inputs=given),
                )
            self.producer.flush(10)
            until(
                lambda w=wave: (
                    all(s in TERMINAL for s, *_ in _runs(self.conn, self.schema, w).values())
                    and len(_runs(self.conn, self.schema, w)) == len(w)
                ),
                120,
                f"a wave of {workflow_id} runs to end",
                interval=0.1,
            )
        return _runs(self.conn, self.schema, run_ids)

    def diagnose(self, workflow_id: str, step_p50: dict[str, float]) -> str:
        import json

        from schemas.models import Diagnosis, DiagnosisKind, DiagnosisSeverity

        subject = f"workflow:{workflow_id}"
        diagnosis = Diagnosis(
            diagnosis_id=f"sequential_independent/{subject}/{uuid.uuid4().hex[:8]}",
            subject=subject,
            kind=DiagnosisKind.SEQUENTIAL_INDEPENDENT,
            severity=DiagnosisSeverity.WARNING,
            detector="bench",
            workflow_id=workflow_id,
            workflow_version=1,
            detected_at=datetime.now(UTC),
            traces_seen=len(step_p50),
            evidence=json.dumps({"step_p50_ms": step_p50}),
            explanation=f"steps of {workflow_id} ran one after the other",
        )
        self.producer.send(self.engine.catalog.diagnoses, subject, diagnosis)
        self.producer.flush(10)
        return diagnosis.diagnosis_id


def _summary(rows: dict[str, tuple[str, int, float, Any]], run_ids: list[str]) -> dict[str, Any]:
    durations = [rows[r][2] for r in run_ids if rows[r][0] == "succeeded"]
    return {
        "succeeded": sum(rows[r][0] == "succeeded" for r in run_ids),
        "p50_ms": round(statistics.median(durations), 1) if durations else None,
        "p95_ms": round(percentile(durations, 95), 1) if durations else None,
        "versions": sorted({rows[r][1] for r in run_ids}),
    }


def measure(seed: int, quick: bool, base: Settings | None = None) -> dict[str, Any]:
    base = base or get_settings()
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"bench-loop-parallel-{tag}"})
    schema = f"bench_loop_parallel_{tag}"
    progress(SCENARIO, f"seed {seed}: prefix {settings.topic_prefix}, schema {schema}")
    try:
        with dependency_stub(PROFILE, seed=seed) as dep:
            return _measure(seed, quick, settings, schema, dep)
    finally:
        delete_prefix_topics(settings, timeout=30)
        drop_engine_schemas(settings, schema)


def _measure(
    seed: int, quick: bool, settings: Settings, schema: str, dep: StubProcess
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.config import ApiSettings
    from streams.producer import Producer

    n = RUNS[quick]
    api_settings = ApiSettings(
        read_schema=schema, api_schema=f"{schema}_api", clickhouse_enabled=False
    )
    with (
        _engine(settings, schema) as engine,
        TestClient(create_app(settings, api_settings)) as api,
        Producer(settings, client_id="bench-loop-parallel") as producer,
        psycopg.connect(settings.postgres_dsn, autocommit=True) as conn,
    ):
        drive = _Driver(engine, api, producer, conn, schema)
        drive.register(four_workflow(dep.url))
        drive.register(trap_workflow(dep.url))
        drive.register(trap_workflow(dep.url, ordered=False, workflow_id="par-trap-unordered"))

        four_inputs: list[dict[str, Any]] = [{} for _ in range(n)]
        trap_inputs: list[dict[str, Any]] = [{"key": f"s{seed}-{i}", "value": i} for i in range(n)]
        before_ids = [f"four-before-{seed}-{i:04d}" for i in range(n)]
        before = drive.runs(FOUR, before_ids, four_inputs)
        trap_before_ids = [f"trap-before-{seed}-{i:04d}" for i in range(n)]
        trap_before = drive.runs(TRAP, trap_before_ids, trap_inputs)
        progress(SCENARIO, f"seed {seed}: before: {_summary(before, before_ids)}")

        four_diag = drive.diagnose(FOUR, _step_p50(conn, schema, before_ids))
        trap_diag = drive.diagnose(TRAP, _step_p50(conn, schema, trap_before_ids))
        optimizer = engine.optimizer

        def decided(diagnosis_id: str) -> Any:
            return next((d for d in optimizer.decisions if d.diagnosis_id == diagnosis_id), None)

        started = time.monotonic()
        four_decision = until(lambda: decided(four_diag), 60, "the optimizer's decision")
        trap_decision = until(lambda: decided(trap_diag), 60, "the optimizer's decision")
        if four_decision.request is None:
            raise RuntimeError(f"no proposal for {FOUR}: {four_decision.reason}")
        mutation_id = four_decision.request.mutation_id

        def status() -> str | None:
            answer = api.get(f"/v1/mutations/{mutation_id}")
            return str(answer.json()["status"]) if answer.status_code == 200 else None

        until(lambda: status() == "validated", 60, "the proposal validated")
        proposal_to_validated_s = time.monotonic() - started
        approved = api.post(
            f"/v1/mutations/{mutation_id}/approve",
            json={"canary_weight": 1.0, "wait_ms": 20_000},
            headers={"X-Reflux-User": "bench"},
        )
        if approved.status_code != 200:
            raise RuntimeError(f"approve: {approved.status_code} {approved.text[:300]}")
        # new runs get the new version once the scheduler read the route
        until(
            lambda: engine.scheduler.workflow_route(FOUR) is not None,
            30,
            "the scheduler routing to the new version",
        )
        after_ids = [f"four-after-{seed}-{i:04d}" for i in range(n)]
        after = drive.runs(FOUR, after_ids, four_inputs)
        trap_after_ids = [f"trap-after-{seed}-{i:04d}" for i in range(n)]
        trap_after = drive.runs(
            TRAP, trap_after_ids, [{**t, "key": f"{t['key']}b"} for t in trap_inputs]
        )
        control_n = max(8, n // 3)
        control_ids = [f"trap-unordered-{seed}-{i:04d}" for i in range(control_n)]
        control = drive.runs(
            "par-trap-unordered",
            control_ids,
            [{"key": f"u{seed}-{i}", "value": i} for i in range(control_n)],
        )
        trap_proposals = api.get("/v1/mutations", params={"workflow_id": TRAP}).json()["data"]

    s_before, s_after = _summary(before, before_ids), _summary(after, after_ids)
    identical = all(
        before[b][3] == after[a][3] and after[a][0] == "succeeded"
        for b, a in zip(before_ids, after_ids, strict=True)
    )
    trap_correct = all(
        trap_after[r][0] == "succeeded" and trap_after[r][3] == {"read": i}
        for i, r in enumerate(trap_after_ids)
    ) and all(trap_before[r][3] == {"read": i} for i, r in enumerate(trap_before_ids))
    broken = sum(
        not (control[r][0] == "succeeded" and control[r][3] == {"read": i})
        for i, r in enumerate(control_ids)
    )
    change = (
        (s_after["p50_ms"] - s_before["p50_ms"]) / s_before["p50_ms"]
        if s_before["p50_ms"] and s_after["p50_ms"]
        else None
    )
    result = {
        "runs_per_phase": n,
        "before": s_before,
        "after": s_after,
        "p50_change": None if change is None else round(change, 4),
        "outputs_identical": identical,
        "predicted": four_decision.plan.proposal.predicted_effect["critical_path"],
        "proposal_to_validated_s": round(proposal_to_validated_s, 2),
        "trap": {
            "proposals": len(trap_proposals),
            "optimizer_decision": trap_decision.reason,
            "outputs_correct": trap_correct,
            "before": _summary(trap_before, trap_before_ids),
            "after": _summary(trap_after, trap_after_ids),
        },
        "trap_broken_share_when_parallel": round(broken / control_n, 3),
    }
    progress(
        SCENARIO,
        f"seed {seed}: p50 {s_before['p50_ms']} -> {s_after['p50_ms']} ms ({change}), "
        f"identical {identical}, trap proposals {len(trap_proposals)}, "
        f"unordered trap broken {broken}/{control_n}",
    )
    return result


@contextlib.contextmanager
def _engine(settings: Settings, schema: str) -> Iterator[Any]:
    from reflux.dev import DevEngine

    engine = DevEngine(
        settings,
        schema=schema,
        trigger_router=False,
        replay_runner=False,
        proposal_replay=None,
        optimizer=True,
    ).start()
    try:
        yield engine
    finally:
        engine.stop()


def run(seeds: list[int], quick: bool) -> dict[str, Any]:
    per_seed = {str(seed): measure(seed, quick) for seed in seeds}
    changes = [r["p50_change"] for r in per_seed.values() if r["p50_change"] is not None]
    goal = {
        "p50_change_at_most": -0.40,
        "p50_change_median": statistics.median(changes) if changes else None,
        "p50_change_worst": max(changes) if changes else None,
        "outputs_identical_all": all(r["outputs_identical"] for r in per_seed.values()),
        "trap_never_parallelised": all(
            r["trap"]["proposals"] == 0 and r["trap"]["outputs_correct"] for r in per_seed.values()
        ),
    }
    goal["met"] = bool(
        changes
        and max(changes) <= -0.40
        and goal["outputs_identical_all"]
        and goal["trap_never_parallelised"]
    )
    return {
        "description": "four independent 150 ms calls written in sequence, plus a trap pair "
        "(PUT then GET of the same key) whose order no template shows",
        "per_seed": per_seed,
        "goal": goal,
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", default="1", help="comma-separated seeds")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run([int(s) for s in args.seeds.split(",")], args.quick), indent=2))
