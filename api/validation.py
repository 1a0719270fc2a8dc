"""Workflow and input validation through :mod:`workflows`, as 422 answers.

The processor reports every problem with a dotted path (``steps[1].needs[0]``, ``inputs.x``);
the API prefixes where the value sits in the request (``body``), so ``loc`` points at the field
the client sent.

Node references are checked against the node catalog: the projected one (``node_versions``)
for every node it knows, the built-in nodes for the rest (a deployment whose workers have not
registered yet, or a catalog that only holds a few user nodes, must still accept
``transform@^1``). The ``/v1`` router binds the request's read model with
:func:`bind_node_catalog`; outside a request (CLI, unit tests) only the built-ins apply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import psycopg
from fastapi import Request
from psycopg_pool import ConnectionPool, PoolTimeout

from api.errors import FieldIssue, RequestInvalidError
from foundation.settings import get_settings
from foundation.tenancy import PLATFORM_TENANT
from node_workers.sandbox.definition_check import sandbox_limit_errors
from node_workers.sandbox.limits import SandboxConfig
from projections.postgres import queries
from workflows import (
    WorkflowDefinition,
    WorkflowValidationError,
    parse_workflow,
    validate_inputs,
)
from workflows.node_catalog import NodeCatalogView, StaticNodeCatalog

__all__ = [
    "bind_node_catalog",
    "builtin_catalog",
    "check_inputs",
    "current_node_catalog",
    "merged_catalog",
    "parse_definition",
    "projected_catalog",
]

log = logging.getLogger(__name__)

CatalogLoader = Callable[[], NodeCatalogView]
_catalog_loader: ContextVar[CatalogLoader | None] = ContextVar(
    "reflux_node_catalog_loader", default=None
)


def _issues(exc: WorkflowValidationError, type_: str) -> list[FieldIssue]:
    return [FieldIssue(error.path, error.message, type_) for error in exc.errors]


@lru_cache(maxsize=1)
def builtin_catalog() -> StaticNodeCatalog:
    """The nodes this build ships, with their versions (the fallback of the catalog)."""
    from node_workers.nodes import builtin_nodes

    versions: dict[str, list[str]] = {}
    for node in builtin_nodes():
        versions.setdefault(node.name, []).append(node.version)
    return StaticNodeCatalog(versions)


def merged_catalog(projected: dict[str, list[str]]) -> StaticNodeCatalog:
    """The projected versions of each node they name, the built-ins for every other node."""
    builtin = builtin_catalog()
    versions = {name: list(builtin.versions(name)) for name in builtin.names()}
    versions.update(projected)
    return StaticNodeCatalog(versions)


def projected_catalog(
    conn: psycopg.Connection[Any], schema: str, tenants: Sequence[str] | None = None
) -> StaticNodeCatalog:
    """The catalog read model (the nodes of ``tenants``; ``None``: all) merged with the
    built-ins (see :func:`merged_catalog`)."""
    projected: dict[str, list[str]] = {}
    for row in queries.list_node_versions(conn, schema=schema, tenants=tenants):
        projected.setdefault(row.name, []).append(row.version)
    return merged_catalog(projected)


def _pool_loader(
    pool: ConnectionPool[Any], schema: str, timeout: float, tenants: Sequence[str] | None
) -> CatalogLoader:
    def load() -> NodeCatalogView:
        try:
            with pool.connection(timeout=timeout) as conn:
                return projected_catalog(conn, schema, tenants)
        except (psycopg.Error, PoolTimeout) as exc:
            # No read model yet (projector not migrated) or Postgres away: the built-ins still
            # catch typos; the scheduler refuses versions the catalog cannot serve anyway.
            log.warning("node catalog read model unavailable, using the built-ins: %s", exc)
            return builtin_catalog()

    return load


async def bind_node_catalog(request: Request) -> None:
    """Router dependency: validation in this request reads the app's catalog read model.

    Async on purpose: it runs in the request's own context, so the binding is visible to the
    endpoint and to the threads it starts (``run_in_threadpool`` copies the context).
    """
    state = request.app.state
    if getattr(state, "pool", None) is None or getattr(state, "api_settings", None) is None:
        return
    api = state.api_settings
    # A workflow may use its tenant's nodes and the platform's catalog (ADR 0051).
    principal = getattr(request.state, "principal", None)
    tenants = None if principal is None else (principal.tenant, PLATFORM_TENANT)
    _catalog_loader.set(_pool_loader(state.pool, api.read_schema, api.pool_timeout_s, tenants))


def current_node_catalog() -> NodeCatalogView:
    """The catalog bound to this request, else the built-ins."""
    loader = _catalog_loader.get()
    return builtin_catalog() if loader is None else loader()


def parse_definition(
    source: Any, node_catalog: NodeCatalogView | None = None
) -> WorkflowDefinition:
    """The parsed definition; 422 (``type: workflow_invalid``) naming every bad field."""
    catalog = node_catalog if node_catalog is not None else current_node_catalog()
    try:
        definition = parse_workflow(source, node_catalog=catalog)
        # code.run limits over the operator's REFLUX_SANDBOX_MAX_* (docs/decisions/0042).
        sandbox = sandbox_limit_errors(definition, SandboxConfig.from_settings(get_settings()))
        if sandbox:
            raise WorkflowValidationError(sandbox)
        return definition
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
