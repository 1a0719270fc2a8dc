"""Projector configuration and failure classification (no services: nothing connects here)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from foundation.errors import ConfigurationError, RefluxError, ServiceUnavailableError
from foundation.settings import Settings
from projections.projector import Projector, is_transient
from schemas.errors import MalformedRecordError
from streams.producer import DeliveryError, DeliveryFailure


def test_topics_and_group_come_from_the_catalog_and_prefix() -> None:
    projector = Projector(Settings(topic_prefix="acme"), "reads", "pg")
    assert projector.topics == (
        "acme.runs",
        "acme.workflows",
        "acme.nodes",
        "acme.mutations",
        "acme.audit",
    )
    assert projector.group_id == "acme.projector.pg"
    assert projector.application_name == "reflux-projector reads/pg"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"assignment": "random"}, "Expected assignment 'group' or 'manual'"),
        ({"batch_size": 0}, "Expected batch_size >= 1"),
        ({"schema": "Bad"}, "Expected a Postgres schema name"),
    ],
)
def test_bad_configuration_is_refused_before_connecting(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Projector(Settings(), **kwargs)


def test_reset_needs_an_exclusive_projector() -> None:
    with pytest.raises(ConfigurationError, match="Expected an exclusive projector"):
        Projector(Settings()).reset()


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (psycopg.OperationalError("connection lost"), True),
        (ServiceUnavailableError("kafka down"), True),
        (DeliveryError([DeliveryFailure("t", None, "_TIMED_OUT", "slow", True)]), True),
        (DeliveryError([DeliveryFailure("t", None, "_MSG_SIZE_TOO_LARGE", "big", False)]), False),
        (RefluxError("bug"), False),
        (psycopg.errors.UndefinedTable("no table"), False),
        (MalformedRecordError("junk"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_failures_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
