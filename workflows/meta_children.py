"""Params of the meta nodes that run child workflows: ``meta.workflow`` and ``meta.loop``.

Meta nodes are steps the scheduler executes itself: they are never looked up in the node
catalog and never dispatched to a worker. These two start *child runs* (docs/workflows.md,
"Meta nodes"; docs/decisions/0025-child-runs-and-the-scheduler-outbox.md):

- ``meta.workflow`` runs another registered workflow as one step: the child's outputs are the
  step's output, its failure fails the step (and the step's retry spec starts a new child);
- ``meta.loop`` runs a workflow again and again, one child run per iteration, until ``until``
  holds on an iteration's output or ``max_iterations`` is reached.

Expressions: everything in the params is rendered against the parent's context when the step is
scheduled, except ``meta.loop``'s ``inputs`` (rendered for each iteration, with ``loop.iteration``
and ``loop.previous``, the previous iteration's outputs, null in the first) and ``until`` (a bare
expression like ``when``, evaluated on each iteration's outputs as ``output``, with
``loop.iteration``).

This module is pure (no scheduler import), so validation and the scheduler share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "CHILD_RUN_NODES",
    "LOOP_INPUT_ROOTS",
    "LOOP_NODE",
    "LOOP_UNTIL_ROOTS",
    "WORKFLOW_NODE",
    "MetaLoopParams",
    "MetaWorkflowParams",
    "check_child_run_step",
    "is_child_run_node",
    "loop_scoped_roots",
    "parse_child_run_params",
]

WORKFLOW_NODE: Final = "meta.workflow"
LOOP_NODE: Final = "meta.loop"
CHILD_RUN_NODES: Final = frozenset({WORKFLOW_NODE, LOOP_NODE})
"""Meta nodes whose steps run as child runs (handled by the scheduler, not by workers)."""

LOOP_INPUT_ROOTS: Final = frozenset({"loop"})
"""Extra names a ``meta.loop``'s ``inputs`` may use: ``loop.iteration``, ``loop.previous``."""
LOOP_UNTIL_ROOTS: Final = frozenset({"loop", "output"})
"""Extra names a ``meta.loop``'s ``until`` may use: ``output`` (this iteration's outputs) and
``loop.iteration``."""

MAX_LOOP_ITERATIONS: Final = 1000
"""Each iteration is a child run with its own log: a bound keeps a loop from flooding the
engine with runs."""


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetaWorkflowParams(_Params):
    """``meta.workflow``: start ``workflow_id`` (``workflow_version``, or the latest) as a child
    run with ``inputs``; the step's output is the child's outputs."""

    workflow_id: str = Field(min_length=1)
    workflow_version: int | None = Field(default=None, ge=1)
    """None: the latest version registered when the child starts (pinned in the child's log)."""
    inputs: dict[str, Any] = Field(default_factory=dict)


class MetaLoopParams(MetaWorkflowParams):
    """``meta.loop``: one child run of ``workflow_id`` per iteration, until ``until`` holds on an
    iteration's outputs or ``max_iterations`` iterations ran.

    The step's output: ``{"output": <last iteration's outputs>, "iterations": n,
    "completed": bool}``; ``completed`` is false only when ``max_iterations`` was reached with
    ``on_max: succeed`` and ``until`` never held. ``on_max: fail`` (the default) fails the step
    with ``LoopMaxIterations`` instead. Without ``until`` the loop runs ``max_iterations`` times
    and completes.
    """

    until: str | None = None
    max_iterations: int = Field(ge=1, le=MAX_LOOP_ITERATIONS)
    on_max: Literal["fail", "succeed"] = "fail"


def is_child_run_node(node_name: str) -> bool:
    return node_name in CHILD_RUN_NODES


def parse_child_run_params(node_name: str, params: Any) -> MetaWorkflowParams:
    """The params of a ``meta.workflow`` / ``meta.loop`` step (raises pydantic's
    ``ValidationError``; :func:`check_child_run_step` turns it into field paths)."""
    model = MetaLoopParams if node_name == LOOP_NODE else MetaWorkflowParams
    return model.model_validate(params)


def loop_scoped_roots(node_name: str, params_path: tuple[str | int, ...]) -> frozenset[str]:
    """Extra expression roots allowed at ``params_path`` (relative to the step's params)."""
    if node_name != LOOP_NODE or not params_path:
        return frozenset()
    if params_path[0] == "inputs":
        return LOOP_INPUT_ROOTS
    if params_path[0] == "until":
        return LOOP_UNTIL_ROOTS
    return frozenset()


def check_child_run_step(
    node_name: str, params: Any, *, timeout: int | None, queue_timeout: int | None
) -> Iterator[tuple[str, str]]:
    """Problems of one child-run step as ``(path relative to the step, message)``."""
    if timeout is not None:
        yield (
            "timeout",
            f"{node_name} steps have no execution timeout: bound the child workflow with its "
            "own deadline (or its steps' timeouts)",
        )
    if queue_timeout is not None:
        yield ("queue_timeout", f"{node_name} steps are not queued for a worker")
    if not isinstance(params, dict):
        yield ("params", f"{node_name} needs an object of params, got {type(params).__name__}")
        return
    try:
        parse_child_run_params(node_name, params)
    except ValidationError as exc:
        for error in exc.errors():
            loc = ".".join(str(part) for part in error["loc"])
            message = error["msg"]
            if error["type"] == "missing":
                message = "required"
            elif error["type"] == "extra_forbidden":
                allowed = ", ".join(
                    (MetaLoopParams if node_name == LOOP_NODE else MetaWorkflowParams).model_fields
                )
                message = f"unknown param (allowed: {allowed})"
            yield (f"params.{loc}" if loc else "params", message)
