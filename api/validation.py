"""Workflow and input validation through :mod:`processors.workflow`, as 422 answers.

The processor reports every problem with a dotted path (``steps[1].needs[0]``, ``inputs.x``);
the API prefixes where the value sits in the request (``body``), so ``loc`` points at the field
the client sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from api.errors import FieldIssue, RequestInvalidError
from processors.workflow import (
    WorkflowDefinition,
    WorkflowValidationError,
    parse_workflow,
    validate_inputs,
)
from processors.workflow.catalog import StaticNodeCatalog

__all__ = ["check_inputs", "parse_definition"]


def _issues(exc: WorkflowValidationError, type_: str) -> list[FieldIssue]:
    return [FieldIssue(error.path, error.message, type_) for error in exc.errors]


@lru_cache(maxsize=1)
def builtin_catalog() -> StaticNodeCatalog:
    """The nodes this build ships, with their versions.

    Until the node catalog read model exists (projected from the ``nodes`` topic), registration
    checks node names and version constraints against the built-in nodes.
    """
    from node_workers.nodes import builtin_nodes

    versions: dict[str, list[str]] = {}
    for node in builtin_nodes():
        versions.setdefault(node.name, []).append(node.version)
    return StaticNodeCatalog(versions)


def parse_definition(source: Any) -> WorkflowDefinition:
    """The parsed definition; 422 (``type: workflow_invalid``) naming every bad field."""
    try:
        return parse_workflow(source, node_catalog=builtin_catalog())
    except WorkflowValidationError as exc:
        raise RequestInvalidError(_issues(exc, "workflow_invalid")) from exc


def _input_path(path: str, under_inputs: bool) -> str:
    """Normalise an input error path to ``inputs.<name>...`` (or ``<name>...`` without it)."""
    bare = path[len("inputs") :].lstrip(".") if path.split(".", 1)[0] == "inputs" else path
    if not under_inputs:
        return bare
    return f"inputs.{bare}" if bare else "inputs"


def check_inputs(
    definition: WorkflowDefinition,
    inputs: Any,
    prefix: Sequence[str | int] = ("body",),
    *,
    under_inputs: bool = True,
) -> Any:
    """The inputs with defaults applied; 422 (``type: inputs_invalid``) naming each bad input.

    ``under_inputs``: the inputs sit in the request's ``inputs`` field (``POST /runs``); False
    when the body itself is the inputs (webhooks).
    """
    try:
        return validate_inputs(definition, inputs)
    except WorkflowValidationError as exc:
        issues = [
            FieldIssue(_input_path(error.path, under_inputs), error.message, "inputs_invalid")
            for error in exc.errors
        ]
        raise RequestInvalidError(issues, prefix) from exc
