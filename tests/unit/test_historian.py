"""The historian's pure parts (ADR 0034): the text embedded for a diagnosis and a proposal, the
ranking of past incidents, the plans written to Postgres, and the embedding model itself (real,
from its wheel, with the network switched off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.historian.context import (
    MAX_CONTEXT_CHARS,
    diagnosis_context,
    diagnosis_id_of,
    evidence_summary,
    proposal_context,
    strategy_of,
    words,
)
from processors.historian.embedder import (
    DIMENSIONS,
    MODEL,
    EmbeddingError,
    default_embedder,
    to_pgvector,
)
from processors.historian.lookup import NoHistory, PastIncident, PastProposal
from processors.historian.plans import decision_plan, diagnosis_plan, mutation_plan
from processors.historian.queries import ProposalRow
from processors.historian.ranking import KEPT_BONUS, candidates_for, rank, score
from schemas.models import (
    Diagnosis,
    DiagnosisKind,
    DiagnosisSeverity,
    GraphMutation,
    GraphMutationType,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationStatus,
)

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RUN_ID = "0b6e6c1e-2f7a-4d59-9a2b-5b1f3c9d7e01"


def diag(**overrides: Any) -> Diagnosis:
    fields: dict[str, Any] = {
        "diagnosis_id": "failure_drift/workflow:orders/step:charge_card/1",
        "subject": "workflow:orders/step:charge_card",
        "kind": DiagnosisKind.FAILURE_DRIFT,
        "severity": DiagnosisSeverity.CRITICAL,
        "detector": "adwin",
        "workflow_id": "orders",
        "workflow_version": 3,
        "step_id": "charge_card",
        "node": "http.request",
        "node_version": "1.2.0",
        "error_class": "HTTPStatusError",
        "detected_at": AT,
        "traces_seen": 512,
        "metrics": {"rate_before": 0.02, "rate_after": 0.31},
        "example_run_ids": [RUN_ID],
        "evidence": json.dumps(
            {
                "error_message": "503 Service Unavailable from payments",
                "window": {"size": 64, "failures": 20},
                "run_ids": [RUN_ID],
                "inputs_hash": "ab" * 32,
                "detector": {"name": "adwin", "delta": 0.002, "grace_period": 30},
            }
        ),
        "explanation": "charge_card fails in 31% of attempts (was 2%).",
    }
    fields.update(overrides)
    return Diagnosis(**fields)


# -- context text ---------------------------------------------------------------------------------


def test_words_splits_identifiers() -> None:
    assert words("fetch_price") == "fetch price"
    assert words("http.request@1.2.0") == "http request 1 2 0"
    assert words("HTTPStatusError") == "HTTPStatus Error"
    assert words("workflow:orders/step:charge-card") == "workflow orders step charge card"


def test_diagnosis_context_says_what_where_which_error_and_why() -> None:
    text = diagnosis_context(diag())
    assert text.startswith("failure drift (critical) found by adwin.")
    assert "In workflow orders, step charge card, node http request version 1.2.0." in text
    assert "Error class HTTPStatus Error." in text
    assert "Error message: 503 Service Unavailable from payments." in text
    assert "rate after 0.31" in text and "rate before 0.02" in text
    assert "window failures 20; window size 64" in text
    assert text.endswith("charge_card fails in 31% of attempts (was 2%).")
    # Opaque values say nothing about the incident: no run ids, no digests, and the message
    # is not repeated in the evidence summary.
    assert RUN_ID not in text and "abab" not in text and "grace" not in text
    assert text.count("503 Service Unavailable") == 1


def test_diagnosis_context_of_a_node_subject_and_bad_evidence() -> None:
    d = diag(
        subject="node:openai.chat@2.0.0",
        workflow_id=None,
        step_id=None,
        node=None,
        node_version=None,
        error_class=None,
        metrics={},
        evidence="not json {",
        kind=DiagnosisKind.COST,
        explanation="x",
    )
    text = diagnosis_context(d)
    assert "On node openai chat 2 0 0." in text
    assert "Evidence: not json {." in text


def test_diagnosis_context_is_bounded() -> None:
    text = diagnosis_context(diag(explanation="slow " * 2000))
    assert len(text) == MAX_CONTEXT_CHARS


def test_evidence_summary_flattens_two_levels_and_lists() -> None:
    summary = evidence_summary(
        {"b": {"c": 1.23456, "deep": {"x": 1}}, "a": ["one", "two", 3], "flag": True, "n": None}
    )
    assert summary == "a one, two, 3; b c 1.23; flag yes"


def test_strategy_and_diagnosis_of_a_proposal() -> None:
    assert strategy_of("optimizer:retry", {"strategy": "timeout"}) == "timeout"
    assert strategy_of("optimizer:retry", {}) == "retry"
    assert strategy_of("user:ann", None) is None
    assert diagnosis_id_of({"diagnosis_id": "d1"}) == "d1"
    assert diagnosis_id_of({"diagnosis_id": 3}) is None
    assert diagnosis_id_of(None) is None


def test_proposal_context() -> None:
    text = proposal_context(
        "orders",
        "optimizer:retry",
        "retry 503s with backoff",
        [{"type": "update_params", "step_id": "charge_card", "data": {"max_attempts": 5}}],
        {"diagnosis_id": "d1"},
    )
    assert text == (
        "Fix retry of workflow orders. retry 503s with backoff "
        "Changes: update params charge card (max attempts 5)."
    )


# -- ranking --------------------------------------------------------------------------------------


def incident(diagnosis_id: str, similarity: float, *statuses: str) -> PastIncident:
    proposals = tuple(
        PastProposal(f"m-{diagnosis_id}-{n}", "timeout", status, [], None)
        for n, status in enumerate(statuses)
    )
    return PastIncident(diagnosis_id, "timeout_drift", "s", similarity, "e", proposals)


def test_a_kept_fix_outranks_a_slightly_closer_incident_without_one() -> None:
    ranked = rank(
        [
            incident("close", 0.95),
            incident("kept", 0.90, "rolled_back", "kept"),
            incident("tried", 0.93, "rolled_back"),
            incident("far_kept", 0.50, "kept"),
        ],
        k=3,
    )
    assert [i.diagnosis_id for i in ranked] == ["kept", "close", "tried"]
    assert score(ranked[0]) == pytest.approx(0.90 + KEPT_BONUS)


def test_a_kept_fix_of_a_different_incident_stays_below_a_close_match() -> None:
    ranked = rank([incident("close", 0.95), incident("other", 0.70, "kept")], k=5)
    assert [i.diagnosis_id for i in ranked] == ["close", "other"]


def test_rank_excludes_the_diagnosis_itself_and_the_dissimilar() -> None:
    found = [incident("self", 1.0), incident("a", 0.8), incident("b", 0.1), incident("c", 0.8)]
    ranked = rank(found, k=5, exclude="self", min_similarity=0.2)
    assert [i.diagnosis_id for i in ranked] == ["a", "c"]  # ties: by id
    assert rank(found, k=0) == []


def test_candidates_leave_room_for_re_ranking() -> None:
    assert candidates_for(1) == 20 and candidates_for(5) == 20 and candidates_for(10) == 40


def test_no_history_knows_nothing() -> None:
    assert NoHistory().similar(diag()) == []


# -- plans ----------------------------------------------------------------------------------------


def test_a_diagnosis_plan_inserts_once_with_its_embedding() -> None:
    plan = diagnosis_plan(diag(), "s1", context="ctx", embedding=[0.5, -0.25], model=MODEL)
    assert plan.updates == ()
    assert 'INSERT INTO "s1".diagnoses' in plan.guard.sql
    assert "ON CONFLICT (diagnosis_id) DO NOTHING" in plan.guard.sql
    params = plan.guard.params
    assert params[0] == "failure_drift/workflow:orders/step:charge_card/1"
    assert "[0.5,-0.25]" in params and "ctx" in params and MODEL in params
    # Evidence that is not JSON is kept as a JSON string rather than refused by Postgres.
    bad = diagnosis_plan(diag(evidence="oops"), "s1", context="c", embedding=[0.0], model=MODEL)
    assert '"oops"' in bad.guard.params


def mutation(status: MutationStatus, **overrides: Any) -> Mutation:
    fields: dict[str, Any] = {
        "mutation_id": "m1",
        "workflow_id": "orders",
        "base_version": 3,
        "status": status,
        "changes": [
            GraphMutation(
                type=GraphMutationType.UPDATE_PARAMS, step_id="charge_card", data={"a": 1}
            )
        ],
        "rationale": "retry",
        "proposed_by": "optimizer:retry",
        "evidence": {"diagnosis_id": "d1", "predicted_effect": {"success_rate": 0.99}},
        "request_id": "r1",
    }
    fields.update(overrides)
    return Mutation(**fields)


def test_a_mutation_plan_links_the_proposal_to_its_diagnosis() -> None:
    proposed = mutation(MutationStatus.PROPOSED)
    plan = mutation_plan(proposed, "s1", context="c", embedding=[1.0], model=MODEL)
    assert '"s1".historian_events' in plan.guard.sql
    assert plan.guard.params == (proposed.event_id,)
    (upsert,) = plan.updates
    params = upsert.params
    assert params[:8] == ("m1", "d1", "orders", 3, "optimizer:retry", "retry", "proposed", "retry")
    assert params[9].obj == {"success_rate": 0.99}  # predicted effect
    assert params[10] is None  # no replay yet
    assert params[11:14] == ("r1", False, None)  # not a decision: no effect looked up


def test_a_decided_mutation_takes_the_effect_of_its_request_and_the_replay_verdict() -> None:
    kept = mutation(
        MutationStatus.KEPT,
        report={"replay": {"verdict": "better"}},
        applied_version=4,
    )
    (upsert,) = mutation_plan(kept, "s1", context="c", embedding=[1.0], model=MODEL).updates
    assert upsert.params[10] == "better"
    assert upsert.params[11:14] == ("r1", True, None)
    assert "historian_decisions" in upsert.sql
    # The lifecycle's copy of the canary's evidence, when the request's is not there.
    judged = kept.model_copy(update={"report": {"canary": {"effect": {"p95_ms": -1.0}}}})
    (upsert,) = mutation_plan(judged, "s1", context="c", embedding=[1.0], model=MODEL).updates
    assert upsert.params[13].obj == {"effect": {"p95_ms": -1.0}}


def test_only_deciding_requests_are_kept() -> None:
    keep = MutationRequest(
        workflow_id="orders",
        mutation_id="m1",
        action=MutationAction.KEEP,
        actor="canary",
        evidence={"effect": {"p95_ms": -300}},
    )
    plan = decision_plan(keep, "s1")
    assert plan is not None and plan.guard.params[1:4] == ("m1", "keep", "canary")
    assert plan.guard.params[4].obj == {"effect": {"p95_ms": -300}}
    propose = keep.model_copy(update={"action": MutationAction.PROPOSE})
    assert decision_plan(propose, "s1") is None


def test_past_proposal_folds_the_replay_verdict_into_the_effect() -> None:
    row = ProposalRow(
        mutation_id="m1",
        diagnosis_id="d1",
        workflow_id="orders",
        base_version=3,
        author="optimizer:retry",
        strategy="retry",
        status="kept",
        rationale="r",
        changes=[{"type": "update_params"}],
        predicted_effect=None,
        replay_verdict="better",
        effect={"effect": {"p95_ms": -300}},
        applied_version=4,
        reason=None,
        proposed_at=AT,
        updated_at=AT,
    )
    past = row.past()
    assert past.effect == {"effect": {"p95_ms": -300}, "replay_verdict": "better"}
    assert replace(row, effect=None, replay_verdict=None).past().effect is None


# -- the model ------------------------------------------------------------------------------------


def test_embeddings_are_unit_vectors_that_put_like_with_like() -> None:
    embedder = default_embedder()
    texts = [
        diagnosis_context(diag()),
        diagnosis_context(diag(explanation="charge_card fails again: 35% of attempts.")),
        diagnosis_context(
            diag(
                kind=DiagnosisKind.REPEATED_INPUTS,
                severity=DiagnosisSeverity.INFO,
                workflow_id="newsletter",
                step_id="render",
                node="transform",
                error_class=None,
                metrics={},
                evidence="{}",
                explanation="render ran 40 times on identical inputs: a cache candidate.",
            )
        ),
    ]
    vectors = np.array(embedder.embed(texts))
    assert vectors.shape == (3, DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.9
    assert similarity[0, 2] < similarity[0, 1] - 0.3
    assert embedder.embed([]) == []
    with pytest.raises(EmbeddingError, match=r"texts \[1\] are blank"):
        embedder.embed(["fine", "  "])
    assert to_pgvector([0.5, 1.0, -0.125]) == "[0.5,1,-0.125]"


def test_the_model_loads_and_embeds_with_the_network_switched_off() -> None:
    """In a fresh process whose sockets all refuse, the weights and tokenizer come from the
    wheel (the package's own loader would try to download the tokenizer)."""
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from processors.historian.embedder import WordLlamaEmbedder
        vector = WordLlamaEmbedder().embed(["supplier API timed out"])[0]
        print(len(vector))
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(DIMENSIONS)
