"""The replay runner's delivery and storage on the real services (Kafka, Postgres): a stored
report, a redelivered request that does not run again, a bad spec and a broken engine reported
as failed, and a proposal's verdict sent to reflux.mutations (ADR 0030).

The engine is replaced by a stand-in returning hand-made pairs (it is not a service: the real
shadow engine is exercised in test_replay_ab.py and test_replay_shadow.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from processors.replay import storage
from processors.replay.runner import ReplayRunner
from processors.replay.shadow import (
    Candidate,
    EffectPolicy,
    ReplayPair,
    RunOutcome,
    Selection,
    StepOutcome,
)
from schemas import decode
from schemas.models import MutationAction, MutationRequest, ReplayRequested
from schemas.serde import record_type_of
from tests.integration.engine_fixtures import HarnessFactory
from tests.support.kafka_log import read_log


def outcome(run_id: str, status: str) -> RunOutcome:
    step = StepOutcome("a", status, 1, 12.0, {"v": run_id}, "executed", None, 1)
    return RunOutcome(run_id, status, {"v": run_id}, None, 12.0, {"a": step})


class FakeShadow:
    """Selects ``runs`` run ids and pairs each with a candidate of ``status``."""

    calls = 0

    def __init__(
        self,
        settings: Any,
        replay_id: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        **_: Any,
    ) -> None:
        self.progress = progress

    def __enter__(self) -> FakeShadow:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def select(self, selection: Selection) -> list[str]:
        return [f"r{n}" for n in range(min(selection.sample_size, 8))]

    def run(
        self, run_ids: Sequence[str], candidate: Candidate, policy: EffectPolicy
    ) -> list[ReplayPair]:
        type(self).calls += 1
        if candidate.mutation_id == "explode":
            raise RuntimeError("the shadow engine fell over")
        pairs = []
        for n, run_id in enumerate(run_ids):
            pairs.append(ReplayPair(outcome(run_id, "succeeded"), outcome(run_id, "failed")))
            if self.progress is not None:
                self.progress(n + 1, len(run_ids))
        return pairs


def request(replay_id: str, *, mutation_id: str | None = None, **spec: Any) -> ReplayRequested:
    body: dict[str, Any] = {
        "selection": {"workflow_id": "wf", "workflow_version": 1, "sample_size": 8},
        "candidate": {"workflow_version": 2, "mutation_id": mutation_id},
        **spec,
    }
    return ReplayRequested(
        replay_id=replay_id,
        workflow_id="wf",
        spec=body,
        requested_by="mutation-processor" if mutation_id else "api",
        mutation_id=mutation_id,
    )


def test_the_runner_stores_reports_once_and_fails_clearly(
    engine_harness: HarnessFactory,
) -> None:
    harness = engine_harness(replay_runner=False, mutation_processor=False)
    runner = ReplayRunner(harness.settings, schema=harness.schema, shadow=FakeShadow)
    try:
        runner.execute(request("rid1", mutation_id="m1"))
        with harness.conn() as conn:
            row = storage.get_replay(conn, harness.schema, "rid1")
            runs = storage.list_replay_runs(conn, harness.schema, "rid1")
        assert row is not None and row.status == "completed" and row.verdict == "worse"
        assert (row.done, row.total) == (8, 8)
        assert row.summary is not None and row.summary["outcomes"]["broke"] == 8
        assert [r["original"]["run_id"] for r in runs] == [f"r{n}" for n in range(8)]

        # Redelivered after it finished: announced again, not run again.
        assert FakeShadow.calls == 1
        runner.execute(request("rid1", mutation_id="m1"))
        assert FakeShadow.calls == 1

        # A spec that does not parse, and an engine that breaks: failed, saying why.
        runner.execute(request("rid2", policy={"per_node": {"http.request": "maybe"}}))
        runner.execute(request("rid3", mutation_id="explode"))
        with harness.conn() as conn:
            bad = storage.get_replay(conn, harness.schema, "rid2")
            broken = storage.get_replay(conn, harness.schema, "rid3")
        assert bad is not None and bad.status == "failed"
        assert bad.error is not None and bad.error.startswith("policy.per_node.http.request:")
        assert broken is not None and broken.status == "failed"
        assert broken.error == "RuntimeError: the shadow engine fell over"
        runner.producer.flush(10)
    finally:
        runner.close()

    # Proposals' verdicts went to reflux.mutations, keyed by the workflow (m1 twice: the
    # redelivery re-announced it; the mutation processor ignores the second). rid2 was the
    # API's: no verdict request.
    catalog = harness.engine.catalog
    verdicts = [
        decode(value, MutationRequest)
        for _, key, value in read_log(
            harness.settings, catalog.mutations.topic, catalog.mutations.partitions
        )
        if value is not None and record_type_of(value) == MutationRequest.AVRO_NAME
    ]
    assert [v.action for v in verdicts] == [MutationAction.REPLAY_VERDICT] * 3
    assert all(v.workflow_id == "wf" for v in verdicts)
    assert [v.mutation_id for v in verdicts] == ["m1", "m1", "explode"]
    first, _, failed = (v.evidence or {} for v in verdicts)
    assert (first["replay_id"], first["status"], first["verdict"]) == ("rid1", "completed", "worse")
    assert (failed["status"], failed["verdict"]) == ("failed", None)
    assert failed["error"] == "RuntimeError: the shadow engine fell over"
