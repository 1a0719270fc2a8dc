"""A ``model_choice`` proposal's canary run as a bandit experiment on the real engine (ADR 0037).

The whole ``DevEngine`` (scheduler, workers, projector, mutation processor, canary judge, the
optimizer's bandit experiments) on its own topic prefix and schema, an OpenAI-compatible stub in
its own process (``benchmarks/loop/stubs.py``: ``big`` answers with 10x the tokens of ``small``;
``small`` is as right as ``big`` on easy questions, much worse on hard ones) and a checker step
scoring each answer. Version 1 asks ``big`` for everything; the proposal asks ``small`` for easy
questions. Applied by policy ``auto`` at weight 0.2, the experiment moves the weight towards the
cheaper-and-good-enough version and keeps it; the judge does not keep it in its place.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from benchmarks.loop.models import DEGRADED, questions
from benchmarks.loop.models_engine import (
    BATCH,
    ENGINE_MODELS,
    MAX_EXPERIMENT_RUNS,
    PER_CLASS,
    checked_workflow,
    model_choice_request,
)
from benchmarks.loop.stubs import openai_stub
from processors.canary.judge import CanaryConfig
from projections.postgres.mutation_queries import (
    get_mutation,
    list_mutation_events,
    list_mutations,
)
from schemas.models import ImprovementPolicy, MutationAction, MutationRequest
from tests.integration.engine_fixtures import Harness, HarnessFactory
from tests.support.waiting import eventually

WORKFLOW = "answer"


@pytest.fixture
def harness(engine_harness: HarnessFactory) -> Harness:
    return engine_harness(
        trigger_router=False,
        replay_runner=False,
        proposal_replay=None,
        canary=True,
        canary_config=CanaryConfig(min_runs=8, max_runs=400),
        bandit=True,
    )


def _batch(harness: Harness, qs: Any, n: int = BATCH) -> list[Any]:
    run_ids = []
    for q in itertools.islice(qs, n):
        inputs = {"prompt": q.prompt, "answer": q.answer, "difficulty": q.difficulty}
        run_ids.append(harness.start(WORKFLOW, inputs))
    return [harness.wait(run_id, timeout=60) for run_id in run_ids]


def _register_auto(harness: Harness, base_url: str) -> None:
    """Version 1 (``big`` for everything) under improvement policy ``auto``."""
    harness.register(checked_workflow(base_url, "big"))
    harness.send(
        harness.engine.catalog.mutations.topic,
        WORKFLOW,
        MutationRequest(
            workflow_id=WORKFLOW,
            action=MutationAction.SET_POLICY,
            actor="user:test",
            policy=ImprovementPolicy.AUTO,
        ),
    )


def test_the_cheaper_good_enough_model_gets_the_traffic_and_is_kept(harness: Harness) -> None:
    qs = iter(questions(5, 2000))
    with openai_stub(ENGINE_MODELS, seed=5) as llm:
        _register_auto(harness, llm.base_url)
        first = _batch(harness, qs)  # recorded runs of version 1 (and the policy is read)
        assert {r.status for r in first} == {"succeeded"}
        proposal = model_choice_request(WORKFLOW, llm.base_url, PER_CLASS, 1, "small for easy")
        assert proposal.mutation_id is not None
        harness.send(harness.engine.catalog.mutations.topic, WORKFLOW, proposal)

        def row() -> Any:
            with harness.conn() as conn:
                return get_mutation(conn, proposal.mutation_id or "", schema=harness.schema)

        applied = eventually(row, 30, "applied", until=lambda r: r and r.status == "applied")
        assert applied.canary_weight == 0.2 and applied.applied_version == 2

        versions: Counter[int] = Counter()
        for _ in range(60):  # at most 480 runs; the experiment decides well before
            found = row()
            if found.status != "applied":
                break
            versions.update(r.workflow_version for r in _batch(harness, qs))
        kept = eventually(row, 15, "decided", until=lambda r: r.status != "applied")
        assert kept.status == "kept", (kept.reason, kept.report["canary"].get("experiment"))

        with harness.conn() as conn:
            events = list_mutation_events(conn, kept.mutation_id, schema=harness.schema)
        assert [e.status for e in events][:5] == [
            "proposed",
            "validating",
            "validated",
            "approved",
            "applied",
        ]
        assert events[-1].actor == "optimizer:bandit"
        evidence = kept.report["canary"]
        assert evidence["judge"] == "bandit" and evidence["decision"] == "keep"
        experiment = evidence["experiment"]
        assert experiment["p_new_better"] >= 0.95
        arms = experiment["arms"]
        # cheaper (tokens) and as good (checker scores) as version 1
        assert arms["new"]["mean_cost"] < 0.6 * arms["previous"]["mean_cost"]
        assert arms["new"]["mean_quality"] >= arms["previous"]["mean_quality"] - 0.1
        # the weight only moved within [budget, 1 - budget] and ended on the new version's side
        # Each reweight is an applied record by the experiment; the weights stay within
        # [budget, 1 - budget] and move towards the new version (a first measurement that is
        # already decisive keeps at once, from the approval's 0.2).
        reweights = [e for e in events if e.status == "applied" and e.actor == "optimizer:bandit"]
        weights = [w["weight"] for w in evidence["weights"] if "weight" in w]
        assert len(weights) == len(reweights)
        assert all(0.1 <= w <= 0.9 for w in weights)
        assert not weights or weights[-1] > 0.5
        assert versions[2] > 0 and versions[1] > 0

        # kept: every new run gets version 2; small answers the easy questions
        after = _batch(harness, qs, 16)
        assert {r.workflow_version for r in after} == {2}
        assert {r.status for r in after} == {"succeeded"}


@pytest.fixture
def loop_harness(engine_harness: HarnessFactory) -> Harness:
    """The whole loop: critic, optimizer (with scenario 4's settings for the workflow), canary
    judge and bandit experiments."""
    from benchmarks.loop.models_engine import CRITIC, OPTIMIZER

    return engine_harness(
        trigger_router=False,
        replay_runner=False,
        proposal_replay=None,
        canary=True,
        bandit=True,
        critic=True,
        critic_config=CRITIC,
        optimizer=True,
        optimizer_config=OPTIMIZER,
    )


def _mutations(harness: Harness) -> list[Any]:
    """Every proposal of the workflow, any author, oldest first."""
    with harness.conn() as conn:
        rows = list_mutations(conn, workflow_id=WORKFLOW, limit=100, schema=harness.schema)
    return sorted(rows, key=lambda r: (r.created_at, r.mutation_id))


def _model_choices(harness: Harness) -> list[Any]:
    return [r for r in _mutations(harness) if r.author == "optimizer:model_choice"]


def _all_mutations(harness: Harness) -> list[dict[str, Any]]:
    """Every proposal of the workflow for a failure message: what else held the canary slot when
    a model choice waited (the failure of 2026-12-07: one waited "validated" behind another
    optimizer's canary)."""
    return [
        {
            "mutation": r.mutation_id,
            "author": r.author,
            "status": r.status,
            "base": r.base_version,
            "applied": r.applied_version,
            "reason": r.reason,
        }
        for r in _mutations(harness)
    ]


def _where(choice: Any) -> dict[str, Any]:
    """A proposal's state for a failure message: status, reason, the experiment's last word."""
    canary = (choice.report or {}).get("canary") or {}
    return {
        "mutation": choice.mutation_id,
        "status": choice.status,
        "reason": choice.reason,
        "weight": choice.canary_weight,
        "experiment": canary.get("experiment"),
    }


def _unique(qs: Any) -> Any:
    # each question asked once (a request id in the prompt), as in the benchmark: repeats would
    # rightly get the answers cached, which is not what this test is about
    for i, q in enumerate(qs):
        yield replace(q, prompt=f"{q.prompt} (request {i})")


def test_the_loop_chooses_the_cheap_model_for_easy_inputs_and_goes_back_when_it_degrades(
    loop_harness: Harness,
) -> None:
    """ADR 0040, nothing played: the critic's cost_share finding -> the optimizer's exploring
    model_choice (small for the largest input class) -> its experiment keeps it; small degrades
    -> the critic's quality_drift of the checker -> the optimizer's answer (big again, its own
    exploring canary rolled back if one runs) -> kept."""
    harness = loop_harness
    qs = _unique(questions(5, 5000))
    with openai_stub(ENGINE_MODELS, seed=5) as llm:
        _register_auto(harness, llm.base_url)
        for _ in range(50):  # the cost finding needs 20 analysed runs of version 1
            _batch(harness, qs)
            if _model_choices(harness):
                break
        [first] = _model_choices(harness)
        assert first.evidence["diagnosis"]["kind"] == "cost"
        assert first.evidence["diagnosis"]["detector"] == "cost_share"
        assert first.changes[0]["data"]["model"] == PER_CLASS
        # Up to the benchmark's bound for this phase (MAX_EXPERIMENT_RUNS, quick: 1,200 runs):
        # the loop may first spend ~700 runs on a noise finding's canary (a timeout), and the
        # model choice waits for the slot -- or, if that canary is kept, is proposed again on
        # the new version. 80 batches (640 runs) were fewer than that, and failed once so.
        for _ in range(MAX_EXPERIMENT_RUNS[True] // BATCH):
            _batch(harness, qs)
            if any(c.status == "kept" for c in _model_choices(harness)):
                break
        choices = _model_choices(harness)
        kept = next((c for c in choices if c.status == "kept"), None)
        # On failure, say where each proposal stands (this failed twice in full runs in
        # session 12, undiagnosed: the experiment's state is what tells why).
        assert kept is not None, ([_where(c) for c in choices], _all_mutations(harness))
        assert kept.mutation_id == first.mutation_id

        llm.control(models=DEGRADED)
        known = {c.mutation_id for c in _model_choices(harness)}
        back = None
        for _ in range(100):
            _batch(harness, qs)
            # The answer to the degradation is the proposal made on the checker's quality drift.
            # A cost exploration of the kept version (small for the hard class too, on its
            # cost_share finding once 64 runs of it are in) may come first on a loaded machine:
            # it is not the answer, and the optimizer rolls it back when it answers.
            new = [
                c
                for c in _model_choices(harness)
                if c.mutation_id not in known and c.evidence["diagnosis"]["kind"] == "quality_drift"
            ]
            back = new[0] if new else None
            if back is not None and back.status == "kept":
                break
        assert back is not None, "no answer to the degradation (a quality_drift proposal)"
        assert back.changes[0]["data"]["model"] == "big"
        assert back.status == "kept", _where(back)
        after = _batch(harness, qs, 16)
        assert {r.status for r in after} == {"succeeded"}
        versions = {r.workflow_version for r in after}
        assert back.applied_version in versions
        # Runs on another version are the canary of a proposal made after the answer: a cost
        # exploration of the kept version once enough runs of it are in (the loop goes on
        # exploring; seen in a full run). Never an older version.
        later = {
            c.applied_version: c
            for c in _model_choices(harness)
            if c.mutation_id not in known | {back.mutation_id} and c.applied_version is not None
        }
        others = versions - {back.applied_version}
        assert others <= later.keys(), (others, [_where(c) for c in later.values()])
        assert all(later[v].evidence["diagnosis"]["kind"] == "cost" for v in others), [
            _where(later[v]) for v in others
        ]
