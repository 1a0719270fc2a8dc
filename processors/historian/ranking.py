"""How past incidents are ranked (pure).

The nearest neighbours by cosine similarity come from the HNSW index; among them, an incident
whose fix was *kept* (the canary measured it and it held) is worth more to the optimizer than an
equally similar one where nothing worked yet: it is a fix to try first. So the score adds
:data:`KEPT_BONUS` to the similarity of incidents with a kept proposal. The bonus is small: a kept
fix of a clearly different incident (similarity lower by more than the bonus) still ranks below
a close match. Incidents whose proposals failed (rolled back, rejected) get no bonus and no
penalty: what did not work is worth knowing too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from processors.historian.lookup import PastIncident

__all__ = ["CANDIDATE_FACTOR", "KEPT_BONUS", "MIN_CANDIDATES", "candidates_for", "rank", "score"]

KEPT_BONUS: Final = 0.15
CANDIDATE_FACTOR: Final = 4
MIN_CANDIDATES: Final = 20


def candidates_for(k: int) -> int:
    """How many nearest neighbours to fetch for a top ``k`` after re-ranking: a kept incident a
    little further away than the k nearest must still be able to move up."""
    return max(k * CANDIDATE_FACTOR, MIN_CANDIDATES)


def score(incident: PastIncident) -> float:
    return incident.similarity + (KEPT_BONUS if incident.kept else 0.0)


def rank(
    incidents: Iterable[PastIncident],
    k: int,
    *,
    exclude: str | None = None,
    min_similarity: float = 0.0,
) -> list[PastIncident]:
    """The best ``k`` by :func:`score` (ties: more similar first, then by id, so the order is
    deterministic), leaving out ``exclude`` (the diagnosis asked about) and anything less
    similar than ``min_similarity``."""
    eligible = [
        i for i in incidents if i.diagnosis_id != exclude and i.similarity >= min_similarity
    ]
    eligible.sort(key=lambda i: (-score(i), -i.similarity, i.diagnosis_id))
    return eligible[: max(k, 0)]
