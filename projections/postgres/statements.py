"""The read models' SQL statements, and how the updates of one batch coalesce (pure).

Appliers (:mod:`projections.postgres.appliers`) describe what one event does as statements.
Most run events change the same two rows: their run's (``runs``) and their step's (``steps``).
A step's four events (``StepScheduled``, ``StepDispatched``, ``StepStarted``,
``StepSucceeded``) applied one statement at a time cost eight statements, the projector's
largest cost under load (docs/decisions/0021-engine-throughput.md). So the two common shapes
are kept as data, not SQL, until the writer runs them:

- :class:`StepUpsert`: insert the step's row or overwrite some of its columns;
- :class:`RunUpdate`: set columns on the run's row (or reopen a finished run), advance
  ``last_seq`` and ``updated_at``;

and :func:`coalesce` folds the updates of one row within a batch into one statement with the
same end result as running them in order. Anything else is a plain :class:`Statement`; its
``scope`` says which rows it may touch, and no update is moved across a statement that may
touch its row.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from projections.postgres.identifiers import table
from schemas.statuses import TERMINAL_RUN_STATUSES, RunStatus

__all__ = ["REOPENED_COLUMNS", "RunUpdate", "Statement", "StepUpsert", "Update", "coalesce"]

RowKey = tuple[str, ...]
"""``("runs", run_id)`` or ``("steps", run_id, step_id)``: the row an update changes."""

_TERMINAL: Final = "(" + ", ".join(f"'{s}'" for s in RunStatus if s in TERMINAL_RUN_STATUSES) + ")"

REOPENED_COLUMNS: Final = ("status", "finished_at", "error", "failed_step", "outputs")
"""What reopening a finished run resets (a re-driven or re-scheduled step)."""


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: tuple[Any, ...] = ()
    scope: RowKey | None = None
    """The rows it may touch: a :data:`RowKey` or a prefix of one (``("steps", run_id)``: every
    step of the run); ``None``: any row. Updates of those rows are not moved across it."""


@dataclass(frozen=True, slots=True)
class StepUpsert:
    """``INSERT`` the step's row with ``values``, or overwrite the ``overwrite`` columns of it
    with theirs (``ON CONFLICT ... DO UPDATE``). Columns not named keep their value on update
    and get their default on insert."""

    schema: str
    run_id: str
    step_id: str
    values: tuple[tuple[str, Any], ...]
    overwrite: frozenset[str]

    @property
    def key(self) -> RowKey:
        return ("steps", self.run_id, self.step_id)

    @property
    def sql(self) -> str:
        return _upsert_sql(self.schema, tuple(name for name, _ in self.values), self.overwrite)

    @property
    def params(self) -> tuple[Any, ...]:
        return (self.run_id, self.step_id, *(value for _, value in self.values))

    def then(self, later: StepUpsert) -> StepUpsert:
        """One upsert with the effect of ``self`` followed by ``later`` on the same row.

        A row that did not exist ends as ``self`` inserted it with ``later``'s overwritten
        columns on top; one that existed gets both overwrites, ``later``'s winning. A column
        ``later`` only inserts (it does not overwrite it) stays out: ``later`` found the row
        ``self`` inserted, without that column.
        """
        merged = dict(self.values)
        for name, value in later.values:
            if name in later.overwrite:
                merged[name] = value
        return replace(
            self, values=tuple(merged.items()), overwrite=self.overwrite | later.overwrite
        )


@dataclass(frozen=True, slots=True)
class RunUpdate:
    """``UPDATE`` the run's row: ``columns``, or (``reopen``) the reset of a finished run;
    ``last_seq`` only moves forward; ``updated_at`` is set unless it is ``None``."""

    schema: str
    run_id: str
    seq: int
    updated_at: datetime | None
    columns: tuple[tuple[str, Any], ...] = ()
    reopen: bool = False
    """A finished run becomes running again (its end cleared); a paused or running one is only
    advanced."""

    @property
    def key(self) -> RowKey:
        return ("runs", self.run_id)

    @property
    def plain(self) -> bool:
        """Only advances the run."""
        return not self.columns and not self.reopen

    @property
    def sql(self) -> str:
        names = tuple(name for name, _ in self.columns)
        return _update_sql(self.schema, names, self.reopen, self.updated_at is not None)

    @property
    def params(self) -> tuple[Any, ...]:
        values = () if self.reopen else tuple(value for _, value in self.columns)
        at = () if self.updated_at is None else (self.updated_at,)
        return (*values, self.seq, *at, self.run_id)

    def then(self, later: RunUpdate) -> RunUpdate | None:
        """One update with the effect of ``self`` followed by ``later``, or ``None`` when no
        single statement has it (``later`` reopens a run ``self`` changed the status of, or
        ``self`` reopened it and ``later`` does not overwrite every column reopening resets)."""
        seq = max(self.seq, later.seq)
        at = later.updated_at if later.updated_at is not None else self.updated_at
        if later.plain:
            return replace(self, seq=seq, updated_at=at)
        if self.plain or (self.reopen and later.reopen):
            return replace(later, seq=seq, updated_at=at)
        if not self.reopen and not later.reopen:
            columns = dict(self.columns)
            columns.update(later.columns)
            return replace(later, columns=tuple(columns.items()), seq=seq, updated_at=at)
        if self.reopen and set(REOPENED_COLUMNS) <= {name for name, _ in later.columns}:
            return replace(later, seq=seq, updated_at=at)
        return None


# The SQL of an upsert or update depends on its shape only; a batch has a handful of shapes.


@functools.lru_cache(maxsize=1024)
def _upsert_sql(schema: str, names: tuple[str, ...], overwrite: frozenset[str]) -> str:
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name in overwrite)
    return (
        f"INSERT INTO {table(schema, 'steps')} (run_id, step_id, {', '.join(names)}) "
        f"VALUES (%s, %s, {', '.join(['%s'] * len(names))}) "
        f"ON CONFLICT (run_id, step_id) DO UPDATE SET {updates}"
    )


@functools.lru_cache(maxsize=1024)
def _update_sql(schema: str, names: tuple[str, ...], reopen: bool, updated_at: bool) -> str:
    if reopen:
        when = f"status IN {_TERMINAL}"
        sets = [f"status = CASE WHEN {when} THEN '{RunStatus.RUNNING}' ELSE status END"]
        sets += [f"{c} = CASE WHEN {when} THEN NULL ELSE {c} END" for c in REOPENED_COLUMNS[1:]]
    else:
        sets = [f"{name} = %s" for name in names]
    sets.append("last_seq = GREATEST(last_seq, %s)")
    if updated_at:
        sets.append("updated_at = %s")
    return f"UPDATE {table(schema, 'runs')} SET {', '.join(sets)} WHERE run_id = %s"


Update = Statement | StepUpsert | RunUpdate


def coalesce(updates: Iterable[Update]) -> list[Update]:
    """The same updates with each row's run of mergeable updates folded into its first one.

    Running the result in order leaves every row as running ``updates`` in order would: a merged
    update takes the place of the first one of its row, which moves later updates of that row
    only across updates of other rows, never across a :class:`Statement` that may touch it.
    """
    out: list[Update] = []
    open_rows: dict[RowKey, int] = {}
    for update in updates:
        if isinstance(update, Statement):
            _close(open_rows, update.scope)
            out.append(update)
            continue
        index = open_rows.get(update.key)
        merged = None if index is None else _merge(out[index], update)
        if index is not None and merged is not None:
            out[index] = merged
            continue
        open_rows[update.key] = len(out)
        out.append(update)
    return out


def _merge(first: Update, later: StepUpsert | RunUpdate) -> StepUpsert | RunUpdate | None:
    if isinstance(first, StepUpsert) and isinstance(later, StepUpsert):
        return first.then(later)
    if isinstance(first, RunUpdate) and isinstance(later, RunUpdate):
        return first.then(later)
    return None  # a row key names one table, so this does not happen


def _close(open_rows: dict[RowKey, int], scope: RowKey | None) -> None:
    """No later update may merge into an update of a row in ``scope``."""
    if scope is None:
        open_rows.clear()
        return
    open_rows.pop(scope, None)
    if scope[0] == "steps" and len(scope) == 2:  # every step of a run
        for key in [k for k in open_rows if k[: len(scope)] == scope]:
            del open_rows[key]
