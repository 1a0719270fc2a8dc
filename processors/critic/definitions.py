"""Where the critic learns which steps are data-independent: the workflow definitions in the
Postgres read model, through the optimizer's ``workflows/data_dependencies.py``.

A definition version never changes once registered, so each (workflow, version) is read once
and its independent pairs cached; an unknown version (not projected yet) is asked again after
``retry_after_s``. The lookup runs inside the critic's agent: one short query per new version,
rare enough not to matter to the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import psycopg

from foundation.settings import Settings
from projections.postgres.queries import get_workflow
from workflows.data_dependencies import independent_pairs
from workflows.model import WorkflowDefinition

__all__ = ["PostgresDependencies"]

log = logging.getLogger(__name__)


class PostgresDependencies:
    """A :data:`~processors.critic.runs.DependencyOracle` over the read model's definitions."""

    def __init__(self, settings: Settings, schema: str = "reflux", retry_after_s: float = 60.0):
        self.settings = settings
        self.schema = schema
        self.retry_after_s = retry_after_s
        self._pairs: dict[tuple[str, int], list[tuple[str, str]]] = {}
        self._missing: dict[tuple[str, int], float] = {}

    def __call__(self, workflow_id: str, version: int) -> Iterable[tuple[str, str]] | None:
        key = (workflow_id, version)
        pairs = self._pairs.get(key)
        if pairs is not None:
            return pairs
        missed = self._missing.get(key)
        if missed is not None and time.monotonic() - missed < self.retry_after_s:
            return None
        try:
            with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
                row = get_workflow(conn, workflow_id, version, schema=self.schema)
        except psycopg.Error as exc:
            log.warning("critic: cannot read %s v%s's definition: %s", workflow_id, version, exc)
            self._missing[key] = time.monotonic()
            return None
        if row is None:
            self._missing[key] = time.monotonic()
            return None
        definition = WorkflowDefinition.from_json_dict(row.definition)
        pairs = self._pairs[key] = independent_pairs(definition)
        return pairs
