"""What each record of ``diagnoses`` and ``reflux.mutations`` does to the historian's tables
(migration 009), as :class:`~projections.postgres.appliers.Plan` s run by the projector's writer
(offsets in the same transaction, poison records dead-lettered).

- ``Diagnosis``: the guard inserts its row (with the embedding the runtime computed); a
  redelivered diagnosis, or the same finding published twice (same ``diagnosis_id``), changes
  nothing: a finding is immutable.
- ``Mutation``: the guard claims the record's ``event_id`` in ``historian_events``; the update
  upserts the proposal's row: status, reason, the replay verdict when the report has one, and on
  ``kept`` / ``rolled_back`` / ``rejected`` the evidence of the request that decided it (read
  from ``historian_decisions``; else the record's ``report.canary``, where the lifecycle copies
  the canary judge's evidence). The partition keeps one workflow's records in order, so the
  last one wins.
- ``MutationRequest`` keep / rollback / reject: its evidence (the canary's statistics and final
  effect) into ``historian_decisions``; it precedes the transition it asks for in the partition.
- Everything else on ``reflux.mutations``: nothing to store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from processors.historian.context import diagnosis_id_of, strategy_of
from processors.historian.embedder import to_pgvector
from projections.postgres.appliers import Plan, jsonb
from projections.postgres.identifiers import table
from projections.postgres.statements import Statement
from schemas.models import Diagnosis, Mutation, MutationAction, MutationRequest

__all__ = [
    "DECIDING_ACTIONS",
    "HISTORIAN_TABLES",
    "decision_plan",
    "diagnosis_plan",
    "mutation_plan",
    "replay_verdict",
]

HISTORIAN_TABLES: Final = (
    "diagnoses",
    "diagnosis_proposals",
    "historian_events",
    "historian_decisions",
)
"""What the historian owns; a rebuild truncates exactly these."""

DECIDING_ACTIONS: Final = frozenset(
    {MutationAction.KEEP, MutationAction.ROLLBACK, MutationAction.REJECT}
)
_DECIDED: Final = ("kept", "rolled_back", "reverted", "rejected")


def diagnosis_plan(
    d: Diagnosis, schema: str, *, context: str, embedding: Sequence[float], model: str
) -> Plan:
    guard = Statement(
        f"INSERT INTO {table(schema, 'diagnoses')} (diagnosis_id, event_id, subject, kind, "
        "severity, detector, workflow_id, workflow_version, step_id, node, node_version, "
        "error_class, detected_at, occurred_at, traces_seen, metrics, example_run_ids, evidence, "
        "explanation, context, embedding, embedding_model) VALUES (%s, %s, %s, %s, %s, %s, %s, "
        "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s::public.vector, %s) "
        "ON CONFLICT (diagnosis_id) DO NOTHING",
        (
            d.diagnosis_id,
            d.event_id,
            d.subject,
            d.kind.value,
            d.severity.value,
            d.detector,
            d.workflow_id,
            d.workflow_version,
            d.step_id,
            d.node,
            d.node_version,
            d.error_class,
            d.detected_at,
            d.occurred_at,
            d.traces_seen,
            jsonb(dict(d.metrics)),
            jsonb(list(d.example_run_ids)),
            _evidence_json(d.evidence),
            d.explanation,
            context,
            to_pgvector(embedding),
            model,
        ),
    )
    return Plan(guard)


def _evidence_json(evidence: str) -> str:
    """The evidence as JSON text for ``::jsonb``; a producer that broke the canonical-JSON
    contract still gets its text kept (as a JSON string), not its diagnosis lost."""
    try:
        json.loads(evidence)
    except (ValueError, TypeError):
        return json.dumps(evidence)
    return evidence


def replay_verdict(report: Any) -> str | None:
    """``report.replay.verdict`` (ADR 0030), when the proposal was replayed."""
    if isinstance(report, dict):
        replay = report.get("replay")
        if isinstance(replay, dict) and isinstance(replay.get("verdict"), str):
            return str(replay["verdict"])
    return None


def _canary_report(report: Any) -> dict[str, Any] | None:
    """``report.canary``: where the lifecycle keeps the canary judge's evidence on the record
    (ADR 0033); the same as the deciding request's evidence, for records without one."""
    if isinstance(report, dict) and isinstance(report.get("canary"), dict):
        return dict(report["canary"])
    return None


def mutation_plan(
    m: Mutation, schema: str, *, context: str, embedding: Sequence[float], model: str
) -> Plan:
    guard = Statement(
        f"INSERT INTO {table(schema, 'historian_events')} (event_id) VALUES (%s) "
        "ON CONFLICT (event_id) DO NOTHING",
        (m.event_id,),
    )
    evidence = m.evidence if isinstance(m.evidence, dict) else {}
    predicted = evidence.get("predicted_effect")
    proposals = table(schema, "diagnosis_proposals")
    decided = m.status.value in _DECIDED
    upsert = Statement(
        f"INSERT INTO {proposals} AS p (mutation_id, diagnosis_id, workflow_id, base_version, "
        "author, strategy, status, rationale, changes, predicted_effect, replay_verdict, effect, "
        "applied_version, reason, proposed_at, updated_at, last_event_id, context, embedding, "
        "embedding_model) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
        f"COALESCE((SELECT evidence FROM {table(schema, 'historian_decisions')} "
        "WHERE request_id = %s AND %s), %s), "
        "%s, %s, %s, %s, %s, %s, %s::public.vector, %s) "
        "ON CONFLICT (mutation_id) DO UPDATE SET status = EXCLUDED.status, "
        "reason = EXCLUDED.reason, applied_version = "
        "COALESCE(EXCLUDED.applied_version, p.applied_version), "
        "replay_verdict = COALESCE(EXCLUDED.replay_verdict, p.replay_verdict), "
        "effect = COALESCE(EXCLUDED.effect, p.effect), updated_at = EXCLUDED.updated_at, "
        "last_event_id = EXCLUDED.last_event_id",
        (
            m.mutation_id,
            diagnosis_id_of(evidence),
            m.workflow_id,
            m.base_version,
            m.proposed_by,
            strategy_of(m.proposed_by, evidence),
            m.status.value,
            m.rationale,
            jsonb([c.model_dump(mode="json") for c in m.changes]),
            jsonb(predicted) if isinstance(predicted, dict) else None,
            replay_verdict(m.report),
            m.request_id,
            decided,
            jsonb(_canary_report(m.report)) if decided else None,
            m.applied_version,
            m.reason,
            m.occurred_at,
            m.occurred_at,
            m.event_id,
            context,
            to_pgvector(embedding),
            model,
        ),
    )
    return Plan(guard, (upsert,))


def decision_plan(request: MutationRequest, schema: str) -> Plan | None:
    """The evidence of a keep / rollback / reject request; ``None`` for other requests."""
    if request.action not in DECIDING_ACTIONS or request.mutation_id is None:
        return None
    evidence = request.evidence if isinstance(request.evidence, dict) else None
    guard = Statement(
        f"INSERT INTO {table(schema, 'historian_decisions')} (request_id, mutation_id, action, "
        "actor, evidence, requested_at) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (request_id) DO NOTHING",
        (
            request.event_id,
            request.mutation_id,
            request.action.value,
            request.actor,
            jsonb(evidence),
            request.occurred_at,
        ),
    )
    return Plan(guard)
