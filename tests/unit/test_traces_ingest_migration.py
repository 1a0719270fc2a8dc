"""Migrations 007 and 008 (ADR 0067, 0068) as rendered: the order of their statements is what
makes the upgrade lose nothing, and the last ingest migration is the one a new store runs.
008's pattern, read back from the rendered view, is checked against encode_trace's output: a
trace that leaves the fast path costs several times the CPU (ADR 0068), and nothing else would
notice."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from foundation.settings import Settings
from projections.traces.migrations import (
    INGEST_MIGRATIONS,
    INGEST_VIEWS,
    load_migrations,
    render,
    template_params,
)
from schemas.models import ErrorInfo, Trace, TraceStatus
from schemas.trace_json import encode_trace


def _statements(tmp_path: Path, version: int) -> list[str]:
    migrations = {m.version: m for m in load_migrations()}
    params = template_params(Settings(data_dir=tmp_path), database="db")
    return render(migrations[version], params)


def _heads(statements: list[str]) -> list[str]:
    return [
        " ".join(s.split()[: 7 if s.startswith("CREATE MATERIALIZED") else 6]) for s in statements
    ]


@pytest.mark.parametrize("version", [7, 8])
def test_the_string_queue_migrations_drop_the_errors_view_first_and_attach_the_consuming_view_last(
    tmp_path: Path, version: int
) -> None:
    assert _heads(_statements(tmp_path, version)) == [
        "DROP VIEW IF EXISTS db.traces_ingest_mv",
        # 003's views: errors first, so no good row is read by the errors view alone.
        "DROP VIEW IF EXISTS db.traces_errors_mv",
        "DROP VIEW IF EXISTS db.traces_mv",
        "DROP TABLE IF EXISTS db.traces_queue",
        "CREATE TABLE IF NOT EXISTS db.traces_ingest",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db.traces_mv",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db.traces_errors_mv",
        "CREATE TABLE IF NOT EXISTS db.traces_queue",
        # Consumption starts when this one attaches: both outputs exist by then.
        "CREATE MATERIALIZED VIEW IF NOT EXISTS db.traces_ingest_mv",
    ]


@pytest.mark.parametrize("version", [7, 8])
def test_the_string_queue_migrations_read_one_string_per_message_through_a_null_table(
    tmp_path: Path, version: int
) -> None:
    statements = _statements(tmp_path, version)
    queue = next(s for s in statements if "ENGINE = Kafka" in s)
    assert "kafka_format = 'JSONAsString'" in queue
    assert "kafka_handle_error_mode = 'stream'" in queue
    assert queue.split("ENGINE")[0].split("(", 1)[1].split() == ["raw", "String", ")"]
    staging = next(
        s for s in statements if s.startswith("CREATE TABLE IF NOT EXISTS db.traces_ingest")
    )
    assert staging.rstrip().endswith("ENGINE = Null")
    ingest_view = statements[-1]
    assert "FROM db.traces_queue" in ingest_view
    # Every other view reads the Null table, never the queue (a SELECT there would consume).
    for view in statements[5:7]:
        assert "FROM db.traces_ingest\n" in view and "traces_queue" not in view


def test_008_changes_only_the_check_of_the_ingest_view(tmp_path: Path) -> None:
    """The tables and the views after the Null table are 007's; the consuming view adds the
    pattern in front of 007's per-field check, which stays as it was."""
    seven, eight = _statements(tmp_path, 7), _statements(tmp_path, 8)
    assert seven[:-1] == eight[:-1]
    view = eight[-1]
    assert view.index("isValidUTF8(raw) AND match(raw, concat(") < view.index(
        "empty(JSONExtractKeysAndValuesRaw(raw))"
    )
    before_check = view.index("multiIf(")
    assert view[:before_check] == seven[-1][: seven[-1].index("multiIf(")]
    assert _check_of(view) == _check_of(seven[-1])


def _check_of(view: str) -> str:
    """The per-field check: from the empty-object test to the end of the view."""
    return view[view.index("empty(JSONExtractKeysAndValuesRaw(raw))") :]


def _pattern_call(view: str) -> str:
    start = view.index("isValidUTF8(raw) AND match(raw, concat(")
    return view[start : view.index(")), '',", start) + len(")), '',")]


def _fast_path(tmp_path: Path) -> re.Pattern[str]:
    """008's pattern as Python ``re`` (the RE2 subset it uses means the same in both)."""
    call = _pattern_call(_statements(tmp_path, 8)[-1])
    literals = re.findall(r"'((?:[^'\\]|\\.)*)'", call)
    pattern = "".join(re.sub(r"\\(.)", r"\1", literal) for literal in literals[:-1])
    assert literals[-1] == ""  # the '' the branch returns
    return re.compile(pattern)


BASE = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _trace(**overrides: object) -> Trace:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "seq": 3,
        "workflow_id": "wf",
        "workflow_version": 2,
        "step_id": "fetch",
        "node": "http.request",
        "node_version": "1.2.0",
        "invocation_id": "inv-1",
        "status": TraceStatus.OK,
        "start": BASE,
        "end": BASE + timedelta(milliseconds=15),
        "latency_ms": 15,
        "inputs_hash": "ab" * 32,
        "metrics": {"bytes": 1024.0, "ratio": 1 / 3, "tiny": 1e-7, "big": 1.5e30, "neg": -2.0},
        "retry_count": 1,
        "cache_hit": False,
        "cost_tokens": 120,
        "context": {"tenant": "t1", "région": "été ☃"},
    }
    fields.update(overrides)
    return Trace(**fields)  # type: ignore[arg-type]


FAST = {
    "a typical trace": _trace(),
    "an error trace": _trace(
        status=TraceStatus.ERROR,
        error=ErrorInfo(error_class="HttpTimeout", message="no answer", retryable=True),
    ),
    "nulls and empty maps": _trace(
        invocation_id=None, cost_tokens=None, metrics={}, context={}, status=TraceStatus.SKIPPED
    ),
    "negative and zero numbers": _trace(seq=0, latency_ms=0, retry_count=0, metrics={"d": -0.5}),
    "a small ratio (18 decimals)": _trace(metrics={"ratio": 1 / 213}),
    "an epoch before 1970": _trace(start=datetime(1969, 7, 20, tzinfo=UTC)),
}


@pytest.mark.parametrize("case", FAST)
def test_encode_traces_layout_takes_the_fast_path(tmp_path: Path, case: str) -> None:
    assert _fast_path(tmp_path).fullmatch(encode_trace(FAST[case]).decode())


def _edit(old: str, new: str) -> str:
    text = encode_trace(_trace()).decode()
    assert old in text, old
    return text.replace(old, new, 1)


SLOW = {
    # Valid traces that the pattern leaves to the per-field check (they still arrive).
    "an escaped quote": encode_trace(_trace(context={"q": 'say "hi"'})).decode(),
    "a newline in a message": encode_trace(
        _trace(error=ErrorInfo(error_class="E", message="line 1\nline 2", retryable=False))
    ).decode(),
    "spaces after separators": _edit('"seq":3,', '"seq": 3,'),
    "another field order": _edit('"run_id":"run-1","seq":3,', '"seq":3,"run_id":"run-1",'),
    "an integer of 19 digits": _edit('"seq":3,', '"seq":1234567890123456789,'),
    "a float with a 3-digit exponent": _edit('"big":1.5e+30', '"big":1.5e+300'),
    "a field left out": _edit('"cost_tokens":120,', ""),
    # Not traces: the pattern must refuse them all, whatever the check then says.
    "seq as a string": _edit('"seq":3,', '"seq":"3",'),
    "seq as a float": _edit('"seq":3,', '"seq":3.0,'),
    "an integer beyond Int64": _edit('"seq":3,', '"seq":12345678901234567890,'),
    "a float beyond Float64": _edit('"bytes":1024.0', '"bytes":1e999'),
    "a metric as a string": _edit('"bytes":1024.0', '"bytes":"1024"'),
    "a context value as a number": _edit('"tenant":"t1"', '"tenant":1'),
    "cache_hit as 0": _edit('"cache_hit":false', '"cache_hit":0'),
    "an unknown status": _edit('"status":"ok"', '"status":"fine"'),
    "an unknown field": _edit('"seq":3,', '"seq":3,"surprise":1,'),
    "an unknown error field": encode_trace(
        _trace(error=ErrorInfo(error_class="E", message="m", retryable=True))
    )
    .decode()
    .replace('"retryable":true', '"retryable":true,"why":"x"'),
    "a raw tab in a string": _edit('"tenant":"t1"', '"tenant":"t\t1"'),
    "a duplicate field": _edit('"seq":3,', '"seq":3,"seq":4,'),
    "trailing bytes": encode_trace(_trace()).decode() + " ",
    "an empty object": "{}",
}


@pytest.mark.parametrize("case", SLOW)
def test_anything_else_is_left_to_the_per_field_check(tmp_path: Path, case: str) -> None:
    assert not _fast_path(tmp_path).fullmatch(SLOW[case])


def test_the_ingest_migrations_and_views_name_the_newest_queue() -> None:
    versions = {m.version for m in load_migrations()}
    assert set(INGEST_MIGRATIONS) <= versions
    assert max(INGEST_MIGRATIONS) == 8 == max(v for v in versions if v in INGEST_MIGRATIONS)
    assert INGEST_VIEWS[0] == "traces_ingest_mv"
