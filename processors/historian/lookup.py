"""What the optimizer asks the historian (the agreed interface; keep the names).

Pure: types and a protocol, no I/O, so the optimizer's pure core may import it. The Postgres
implementation is :class:`processors.historian.postgres.PostgresHistorian` (it needs psycopg and
the embedding model, which a pure module must not import).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from schemas.models import Diagnosis

__all__ = ["Historian", "NoHistory", "PastIncident", "PastProposal"]


@dataclass(frozen=True)
class PastProposal:
    """One mutation proposal that answered a past diagnosis (``evidence.diagnosis_id``)."""

    mutation_id: str
    strategy: str | None
    """``evidence.strategy``, else the ``<strategy>`` of author ``optimizer:<strategy>``."""
    status: str
    """Where it ended or stands: kept | rolled_back | rejected | applied | validated | ..."""
    changes: list[dict[str, Any]]
    """The diff (``GraphMutation`` as JSON: type, step_id, data)."""
    effect: dict[str, Any] | None
    """What was measured: the evidence of the keep / rollback decision (the canary's statistics
    and final effect) plus ``replay_verdict`` when the proposal was replayed; ``None`` before."""


@dataclass(frozen=True)
class PastIncident:
    """A stored diagnosis similar to the one asked about, with what was tried for it."""

    diagnosis_id: str
    kind: str
    subject: str
    similarity: float
    """Cosine similarity of the two context embeddings, in [-1, 1]."""
    explanation: str
    proposals: tuple[PastProposal, ...]
    """What was tried for it, newest first."""

    @property
    def kept(self) -> bool:
        """Whether a fix of this incident was kept (the canary measured it and it held)."""
        return any(p.status == "kept" for p in self.proposals)


class Historian(Protocol):
    def similar(self, diagnosis: Diagnosis, k: int = 5) -> list[PastIncident]:
        """Up to ``k`` past incidents like ``diagnosis`` (never itself), best first: by
        similarity, preferring those whose proposals were kept."""
        ...


class NoHistory:
    """A historian that remembers nothing (no Postgres, or the historian is not running)."""

    def similar(self, diagnosis: Diagnosis, k: int = 5) -> list[PastIncident]:
        return []
