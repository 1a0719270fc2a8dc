"""What a node's params and output are made of, shared by the workers and the scheduler.

The worker validates an invocation's params into the node's ``Input`` model
(:func:`node_workers.node.validate_params`); the scheduler does the same for a pure node it
evaluates inline (:mod:`workflows.pure_nodes`, docs/decisions/0064-inline-pure-steps.md). Both
must refuse the same params with the same message, so the model base and the message format
live here, below both layers.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["NodeModel", "field_path", "format_validation_error"]


class NodeModel(BaseModel):
    """Base of node ``Input``/``Output`` models: unknown params are errors, not silently dropped
    (a typo like ``urll`` must fail the step, not send a request without a URL)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def field_path(loc: Iterable[int | str], root: str = "") -> str:
    """``root.name[0].field`` for a validator's location (pydantic ``loc``, jsonschema
    ``absolute_path``); without a root the path starts at its first name."""
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(exc: ValidationError) -> str:
    """``"params.url: Input should be a valid URL; params.timeout_s: ..."``."""
    return "; ".join(
        f"{field_path(error['loc'], 'params')}: {error['msg']}" for error in exc.errors()
    )
