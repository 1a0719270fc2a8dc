"""One error root, one classification: ``foundation.errors.classify``."""

from __future__ import annotations

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from api.errors import ApiError, NotFoundError, RequestInvalidError, UnavailableError
from api.routes.hooks import MailboxFullApiError
from foundation.errors import (
    ConfigurationError,
    ErrorClassification,
    NonRetryableError,
    RefluxError,
    RetryableError,
    ServiceUnavailableError,
    classify,
)
from infra.services.base import ServiceError
from node_workers.errors import NonRetryableNodeError, RetryableNodeError
from node_workers.webhooks import MailboxFullError
from processors.scheduler.evolve import EvolveError
from projections.projector import postgres_transient
from reflux.client import ClientError
from schemas.errors import MalformedRecordError, SchemaError, UnknownSchemaError
from schemas.trace_json import TraceJsonError
from streams.consumer import kafka_transient
from streams.producer import DeliveryError, DeliveryFailure
from workflows.expressions import ExpressionSyntaxError, TemplateError

_TIMED_OUT = DeliveryFailure("t", None, "_MSG_TIMED_OUT", "slow", retriable=True)
_TOO_LARGE = DeliveryFailure("t", None, "MSG_SIZE_TOO_LARGE", "big", retriable=False)


@pytest.mark.parametrize(
    ("exc", "error_class", "retryable"),
    [
        # foundation: the root and its two halves
        (RefluxError("x"), "Reflux", False),
        (RetryableError("x"), "Retryable", True),
        (NonRetryableError("x"), "NonRetryable", False),
        (ConfigurationError("x"), "Configuration", False),
        (ServiceUnavailableError("x"), "ServiceUnavailable", True),
        (NonRetryableError("x", error_class="HttpStatus"), "HttpStatus", False),
        # the former roots keep the class strings traces and dead letters already carry
        (SchemaError("x"), "SchemaError", False),
        (MalformedRecordError("x"), "MalformedRecord", False),
        (UnknownSchemaError(b"\x01" * 8), "UnknownSchema", False),
        (TraceJsonError("x"), "MalformedTraceJson", False),
        (ApiError("x"), "ApiError", False),
        (NotFoundError("x"), "NotFoundError", False),
        (RequestInvalidError([]), "RequestInvalidError", False),
        (UnavailableError("x"), "UnavailableError", True),
        (MailboxFullApiError("x"), "MailboxFullApiError", True),
        (ServiceError("x"), "ServiceError", False),
        (EvolveError("x"), "EvolveError", False),
        (ExpressionSyntaxError("x"), "ExpressionSyntaxError", False),
        (ClientError("x"), "ClientError", False),
        (MailboxFullError("x"), "MailboxFullError", True),
        # the rest of the tree
        (TemplateError("steps.a.params", "x"), "TemplateError", False),
        (RetryableNodeError("x", error_class="Http5xx"), "Http5xx", True),
        (NonRetryableNodeError("x", error_class="Http4xx"), "Http4xx", False),
        (DeliveryError([_TIMED_OUT]), "Delivery", True),
        (DeliveryError([_TIMED_OUT, _TOO_LARGE]), "Delivery", False),
        # anything else is a bug: its type name, never retried
        (KeyError("x"), "KeyError", False),
        (ValueError("x"), "ValueError", False),
        (psycopg.OperationalError("x"), "OperationalError", False),
    ],
)
def test_every_error_classifies(exc: BaseException, error_class: str, retryable: bool) -> None:
    assert classify(exc) == ErrorClassification(error_class, retryable)


def test_a_transient_rule_makes_a_foreign_error_retryable_and_keeps_its_class() -> None:
    lost = psycopg.OperationalError("connection lost")
    assert classify(lost, transient=postgres_transient) == ErrorClassification(
        "OperationalError", True
    )
    assert classify(psycopg.errors.UndefinedTable("x"), transient=postgres_transient) == (
        ErrorClassification("UndefinedTable", False)
    )
    timed_out = KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True))
    fatal = KafkaException(KafkaError(KafkaError._FATAL, fatal=True))
    assert classify(timed_out, transient=kafka_transient) == ErrorClassification(
        "KafkaException", True
    )
    assert classify(fatal, transient=kafka_transient).retryable is False
    assert classify(timed_out).retryable is False  # without the streams layer's rule


def test_a_reflux_error_says_itself_whatever_the_rule() -> None:
    def always(_exc: BaseException) -> bool:
        return True

    assert classify(NonRetryableError("x"), transient=always).retryable is False
    assert classify(MalformedRecordError("x"), transient=always).retryable is False


def test_retryable_and_non_retryable_halves_agree_with_the_classification() -> None:
    retryable = [RetryableError("x"), ServiceUnavailableError("x"), MailboxFullError("x")]
    assert all(classify(exc).retryable for exc in retryable)
    permanent = [NonRetryableError("x"), SchemaError("x"), EvolveError("x"), ServiceError("x")]
    assert not any(classify(exc).retryable for exc in permanent)
