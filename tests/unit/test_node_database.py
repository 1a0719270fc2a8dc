"""database.query@1.0.0, pure parts: params validation, JSON conversion of values, error
classification and secret scrubbing. Queries run against the real Postgres in
tests/integration/test_node_database.py."""

from __future__ import annotations

import ipaddress
import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.types.range import Range

from node_workers.node import NonRetryableNodeError, validate_params
from node_workers.nodes.database_query import (
    DEFAULT_MAX_ROWS,
    DatabaseQueryInput,
    DatabaseQueryNode,
    classify_db_error,
    scrub,
    to_json_value,
)

DSN = "postgresql://app:pa55word-x@db.internal:5432/shop"


def _params(**raw: Any) -> DatabaseQueryInput:
    return validate_params(DatabaseQueryNode(), {"dsn": DSN, "sql": "SELECT 1", **raw})


def test_defaults() -> None:
    params = _params()
    assert params.read_only is True
    assert params.max_rows == DEFAULT_MAX_ROWS == 1000
    assert params.statement_timeout_ms == 10_000
    assert params.connect_timeout_s == 10
    assert params.params == []


def test_params_may_be_positional_or_named() -> None:
    assert _params(params=[1, "a", None]).params == [1, "a", None]
    assert _params(params={"who": "ann"}).params == {"who": "ann"}


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"sql": ""}, "params.sql"),
        ({"max_rows": 0}, "params.max_rows"),
        ({"statement_timeout_ms": 0}, "params.statement_timeout_ms"),
        ({"connect_timeout_s": 0}, "params.connect_timeout_s"),
        ({"read_only": "maybe"}, "params.read_only"),
        ({"dsn": ""}, "params.dsn"),
        ({"dsn": "   "}, "params.dsn"),
        ({"dsn": 5}, "params.dsn"),
        ({"sqll": "SELECT 1"}, "params.sqll"),
    ],
)
def test_invalid_params_name_their_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _params(**raw)
    assert info.value.error_class == "ValidationError"
    assert str(info.value).startswith(path + ":"), str(info.value)


def test_params_must_be_a_list_or_an_object() -> None:
    with pytest.raises(NonRetryableNodeError, match=r"params\.params"):
        _params(params="x")


def test_an_unparsable_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        _params(dsn="host=db password=topsecret-1 bogus")
    assert str(info.value).startswith("params.dsn:")
    assert "does not parse" in str(info.value)
    assert "topsecret-1" not in str(info.value)


def test_the_dsn_stays_out_of_reprs_and_dumps() -> None:
    params = _params()
    assert "pa55word" not in repr(params)
    assert "pa55word" not in str(params.model_dump(mode="json"))
    assert params.dsn is not None and params.dsn.get_secret_value() == DSN


def test_manifest_marks_the_dsn_write_only() -> None:
    schema = DatabaseQueryNode().manifest()["input_schema"]
    assert {"format": "password", "type": "string", "writeOnly": True} in schema["properties"][
        "dsn"
    ]["anyOf"]
    assert schema["required"] == ["sql"]
    assert "connection" in schema["properties"]


def test_a_connection_name_is_the_other_way_to_name_the_database() -> None:
    params = validate_params(DatabaseQueryNode(), {"connection": "orders", "sql": "SELECT 1"})
    assert params.connection == "orders" and params.dsn is None


@pytest.mark.parametrize(
    "raw",
    [
        {"sql": "SELECT 1"},
        {"sql": "SELECT 1", "connection": "orders", "dsn": DSN},
    ],
)
def test_exactly_one_of_connection_or_dsn(raw: dict[str, Any]) -> None:
    with pytest.raises(NonRetryableNodeError, match="exactly one of connection"):
        validate_params(DatabaseQueryNode(), raw)


def test_a_connection_name_is_checked() -> None:
    with pytest.raises(NonRetryableNodeError) as info:
        validate_params(DatabaseQueryNode(), {"connection": "Orders DB", "sql": "SELECT 1"})
    assert str(info.value).startswith("params.connection:")


def test_only_read_only_invocations_are_cacheable() -> None:
    node = DatabaseQueryNode()
    assert node.side_effects is True
    assert node.cacheable_for(_params()) is True
    assert node.cacheable_for(_params(read_only=False)) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (7, 7),
        ("text", "text"),
        (1.5, 1.5),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (Decimal("12.50"), "12.50"),
        (Decimal("1e-30"), "1E-30"),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00"),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (date(2026, 1, 2), "2026-01-02"),
        (time(13, 30), "13:30:00"),
        (timedelta(days=1, hours=2, milliseconds=500), 93600.5),
        (b"\x01\x02", "AQI="),
        (memoryview(b"\xff"), "/w=="),
        (UUID("6f1e8c1c-1b7a-4b7e-9d55-0f2a4c1f4e01"), "6f1e8c1c-1b7a-4b7e-9d55-0f2a4c1f4e01"),
        (ipaddress.ip_address("10.0.0.1"), "10.0.0.1"),
        (ipaddress.ip_network("10.0.0.0/8"), "10.0.0.0/8"),
        (ipaddress.ip_interface("::1/128"), "::1/128"),
        (Range(1, 5), "[1, 5)"),
    ],
)
def test_values_become_json_safe(value: Any, expected: Any) -> None:
    assert to_json_value(value) == expected


def test_containers_convert_recursively() -> None:
    value = {"a": [Decimal("1.0"), {"b": date(2026, 1, 1)}], 3: (math.nan,)}
    assert to_json_value(value) == {"a": ["1.0", {"b": "2026-01-01"}], "3": ["NaN"]}


@pytest.mark.parametrize(
    ("exc", "connecting", "error_class", "retryable"),
    [
        (psycopg.OperationalError("connection refused"), True, "DatabaseUnavailable", True),
        (ConnectionRefusedError(), True, "DatabaseUnavailable", True),
        (
            psycopg.OperationalError("server closed the connection"),
            False,
            "DatabaseUnavailable",
            True,
        ),
        (psycopg.InterfaceError("the connection is closed"), False, "DatabaseUnavailable", True),
        (pg_errors.AdminShutdown("terminating"), False, "DatabaseUnavailable", True),
        (pg_errors.CannotConnectNow("starting up"), False, "DatabaseUnavailable", True),
        (pg_errors.TooManyConnections("too many"), False, "DatabaseUnavailable", True),
        (pg_errors.QueryCanceled("statement timeout"), False, "DatabaseTimeout", True),
        (pg_errors.LockNotAvailable("lock timeout"), False, "DatabaseTimeout", True),
        (pg_errors.SerializationFailure("could not serialize"), False, "DatabaseConflict", True),
        (pg_errors.DeadlockDetected("deadlock"), False, "DatabaseConflict", True),
        (pg_errors.ReadOnlySqlTransaction("read-only"), False, "ReadOnlyViolation", False),
        (pg_errors.UndefinedTable("no relation"), False, "DatabaseError", False),
        (pg_errors.SyntaxError("syntax"), False, "DatabaseError", False),
        (pg_errors.UniqueViolation("duplicate key"), False, "DatabaseError", False),
        (psycopg.ProgrammingError("2 placeholders"), False, "DatabaseError", False),
        (psycopg.ProgrammingError('invalid option "x"'), True, "DatabaseError", False),
    ],
)
def test_error_classification(
    exc: Exception, connecting: bool, error_class: str, retryable: bool
) -> None:
    error = classify_db_error(exc, connecting=connecting)
    assert (error.error_class, error.retryable) == (error_class, retryable)
    assert str(exc) in str(error)


def test_server_errors_carry_their_sqlstate() -> None:
    error = classify_db_error(pg_errors.UndefinedTable('relation "x" does not exist'))
    assert str(error) == '42P01 relation "x" does not exist'
    timeout = classify_db_error(pg_errors.QueryCanceled("canceling statement"))
    assert "57014" in str(timeout)


def test_classification_scrubs_secrets() -> None:
    exc = psycopg.OperationalError(f"could not connect with {DSN} (password pa55word-x)")
    error = classify_db_error(exc, connecting=True, secrets=[DSN, "pa55word-x"])
    assert "pa55word" not in str(error) and DSN not in str(error)
    assert str(error).count("***") == 2


def test_scrub() -> None:
    assert scrub("dsn=postgresql://u:longpass@h/db", ["postgresql://u:longpass@h/db"]) == "dsn=***"
    assert scrub("a longpass b", ["longpass", ""]) == "a *** b"
    # The longer secret goes first, so a password inside the DSN does not split it.
    assert scrub("x u:longpass@h", ["longpass", "u:longpass@h"]) == "x ***"
    # Too short to hide without mangling ordinary words.
    assert scrub("a pw b", ["pw"]) == "a pw b"
