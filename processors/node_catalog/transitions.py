"""Lifecycle of a node version: draft -> staging -> production -> deprecated, and weights.

Pure rules the API applies before it publishes the next ``NodeCatalogEntry``. A refused change
raises :class:`TransitionError` with an "Expected X, but Y" message (the API answers 409).

- ``promote``: draft -> staging, staging -> production; anything else is refused.
- ``deprecate``: draft, staging or production -> deprecated. Deprecated is final: a deprecated
  version refuses new runs (running ones finish), and bringing it back would silently re-route
  pinned workflows, so ship a new patch version instead.
- rollout weight: 0..1, on any version that is not deprecated (set it before promoting to have
  the share ready; it only routes traffic while the version is in production).
"""

from __future__ import annotations

import math
from typing import Final

from foundation.errors import NonRetryableError
from schemas.models import NodeStatus

__all__ = [
    "PROMOTIONS",
    "TransitionError",
    "check_weight",
    "deprecated",
    "promoted",
    "reweighted",
]

PROMOTIONS: Final = {
    NodeStatus.DRAFT: NodeStatus.STAGING,
    NodeStatus.STAGING: NodeStatus.PRODUCTION,
}


class TransitionError(NonRetryableError):
    error_class = "CatalogTransition"


def promoted(key: str, status: NodeStatus) -> NodeStatus:
    """The next stage of ``status``; ``key`` (``name@version``) is for the message."""
    target = PROMOTIONS.get(status)
    if target is None:
        raise TransitionError(
            f"Expected {key} to be draft or staging to promote it, but it is {status.value}"
        )
    return target


def deprecated(key: str, status: NodeStatus) -> NodeStatus:
    if status is NodeStatus.DEPRECATED:
        raise TransitionError(
            f"Expected {key} to be draft, staging or production to deprecate it, "
            "but it is deprecated already"
        )
    return NodeStatus.DEPRECATED


def check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise TransitionError(f"Expected a rollout weight between 0 and 1, but got {weight!r}")
    return float(weight)


def reweighted(key: str, status: NodeStatus, weight: float) -> float:
    if status is NodeStatus.DEPRECATED:
        raise TransitionError(
            f"Expected {key} not to be deprecated to change its rollout weight, but it is"
        )
    return check_weight(weight)
