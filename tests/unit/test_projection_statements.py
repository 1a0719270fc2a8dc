"""How a batch's read-model updates coalesce (pure; the equivalence with applying the events
one by one is checked against Postgres in tests/integration/test_projection_scenarios.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from projections.postgres.statements import (
    REOPENED_COLUMNS,
    RunUpdate,
    Statement,
    StepUpsert,
    Update,
    coalesce,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def upsert(step: str, run: str = "r", **values: object) -> StepUpsert:
    """Overwrites every column it names except ``node`` (like an outcome event)."""
    columns = tuple(values.items())
    return StepUpsert("s", run, step, columns, frozenset(values) - {"node"})


def advance(seq: int, run: str = "r", **columns: object) -> RunUpdate:
    return RunUpdate("s", run, seq, T0 + timedelta(seconds=seq), tuple(columns.items()))


def reopen(seq: int, run: str = "r") -> RunUpdate:
    return RunUpdate("s", run, seq, T0 + timedelta(seconds=seq), reopen=True)


def test_a_later_upsert_overwrites_only_what_it_overwrites() -> None:
    first = upsert("a", node="n1", status="scheduled", params=1, started_at=None)
    later = upsert("a", node="n2", status="running", started_at=T0, worker="w")
    merged = first.then(later)
    # node: inserted by the first, only inserted (not overwritten) by the later one
    assert dict(merged.values) == {
        "node": "n1",
        "status": "running",
        "params": 1,
        "started_at": T0,
        "worker": "w",
    }
    assert merged.overwrite == {"status", "params", "started_at", "worker"}
    assert "node = EXCLUDED.node" not in merged.sql
    assert merged.sql.count("%s") == len(merged.params)


def test_run_updates_merge_when_one_statement_has_their_effect() -> None:
    done = advance(5, status="succeeded", outputs=1, error=None, failed_step=None, finished_at=T0)
    # a plain advance after anything: the first with the later position and time
    assert advance(3).then(advance(4)) == advance(4)
    merged = done.then(advance(6))
    assert merged is not None and dict(merged.columns)["status"] == "succeeded"
    assert (merged.seq, merged.updated_at) == (6, T0 + timedelta(seconds=6))
    # reopening twice is reopening once; a reopen absorbs the advances around it
    assert reopen(1).then(reopen(2)) == reopen(2)
    assert advance(1).then(reopen(2)) == reopen(2)
    # columns after columns: the later values win
    both = advance(1, status="paused", error="x").then(advance(2, status="running"))
    assert both is not None and dict(both.columns) == {"status": "running", "error": "x"}
    # a reopen after a status change depends on that status: not mergeable
    assert done.then(reopen(6)) is None
    # after a reopen, only an update that sets every reset column replaces it
    failed = advance(7, status="failed", error="e", failed_step="a", finished_at=T0)
    assert reopen(6).then(failed) is None
    assert reopen(6).then(done) is not None
    assert set(REOPENED_COLUMNS) <= {name for name, _ in done.columns}


def test_a_rejection_advances_the_run_without_touching_updated_at() -> None:
    rejected = RunUpdate("s", "r", 9, None)
    assert "updated_at" not in rejected.sql and rejected.params == (9, "r")
    merged = advance(8).then(rejected)
    assert merged is not None and (merged.seq, merged.updated_at) == (9, T0 + timedelta(seconds=8))


def test_coalesce_folds_each_row_into_its_first_update() -> None:
    updates: list[Update] = [
        upsert("a", status="scheduled"),
        reopen(1),
        upsert("b", status="scheduled"),
        upsert("a", status="dispatched"),
        reopen(2),
        advance(3),
        upsert("a", status="succeeded"),
    ]
    out = coalesce(updates)
    assert out == [
        upsert("a", status="succeeded"),
        RunUpdate("s", "r", 3, T0 + timedelta(seconds=3), reopen=True),
        upsert("b", status="scheduled"),
    ]


def test_no_update_moves_across_a_statement_that_may_touch_its_row() -> None:
    cancel_steps = Statement("UPDATE steps ...", scope=("steps", "r"))
    insert_run = Statement("INSERT INTO runs ...", scope=("runs", "r2"))
    anything = Statement("SELECT 1")
    out = coalesce(
        [
            upsert("a", status="running"),
            upsert("a", run="r2", status="running"),
            advance(1, run="r2"),
            cancel_steps,
            insert_run,
            upsert("a", status="x"),  # after the cancel: a new statement
            upsert("a", run="r2", status="y"),  # another run's step: merged into the first
            advance(2, run="r2"),  # after the run's insert: a new statement
            anything,
            upsert("a", run="r2", status="z"),  # after a statement of unknown scope: new
        ]
    )
    assert out == [
        upsert("a", status="running"),
        upsert("a", run="r2", status="y"),
        advance(1, run="r2"),
        cancel_steps,
        insert_run,
        upsert("a", status="x"),
        advance(2, run="r2"),
        anything,
        upsert("a", run="r2", status="z"),
    ]
