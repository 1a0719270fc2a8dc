"""What the optimizer needs from the historian (pure).

The historian's interface (``processors.historian.lookup``: ``Historian``, ``PastIncident``,
``PastProposal``) satisfies these protocols structurally; they are restated here, with only the
attributes the optimizer reads, so the optimizer does not depend on the historian's package
(it may be absent, or not running: :class:`NoHistory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from schemas.models import Diagnosis

__all__ = ["Historian", "IncidentLike", "NoHistory", "ProposalLike"]


class ProposalLike(Protocol):
    @property
    def mutation_id(self) -> str: ...
    @property
    def strategy(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def changes(self) -> list[dict[str, Any]]: ...
    @property
    def effect(self) -> dict[str, Any] | None: ...


class IncidentLike(Protocol):
    @property
    def diagnosis_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def similarity(self) -> float: ...
    @property
    def proposals(self) -> Sequence[ProposalLike]: ...


class Historian(Protocol):
    def similar(self, diagnosis: Diagnosis, k: int = 5) -> Sequence[IncidentLike]: ...


class NoHistory:
    """Remembers nothing: what the optimizer uses until a historian answers."""

    def similar(self, diagnosis: Diagnosis, k: int = 5) -> Sequence[IncidentLike]:
        return []
