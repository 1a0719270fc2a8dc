"""Client configs, header handling, error classification and the CLI table (no broker needed)."""

from __future__ import annotations

import argparse
import io
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from foundation.errors import (
    ConfigurationError,
    NonRetryableError,
    RetryableError,
    ServiceUnavailableError,
)
from foundation.settings import Settings
from schemas.errors import MalformedRecordError
from streams.cli import add_topics_commands, render_table
from streams.consumer import ConsumedRecord, consumer_config, error_class_of, is_retryable
from streams.dlq import PoisonRecord, dead_letter_headers
from streams.producer import (
    DeliveryError,
    DeliveryFailure,
    Producer,
    normalize_headers,
    producer_config,
)

SETTINGS = Settings(kafka_bootstrap="broker:1234", topic_prefix="unit")


def test_producer_is_idempotent_with_acks_all() -> None:
    config = producer_config(SETTINGS)
    assert config["bootstrap.servers"] == "broker:1234"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["linger.ms"] >= 0 and config["batch.size"] > 0


def test_producer_tuning_is_overridable() -> None:
    config = producer_config(SETTINGS, {"linger.ms": 50, "compression.type": "zstd"})
    assert config["linger.ms"] == 50
    assert config["compression.type"] == "zstd"


@pytest.mark.parametrize("overrides", [{"enable.idempotence": False}, {"acks": 1}, {"acks": "0"}])
def test_producer_guarantees_cannot_be_weakened(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="idempotent producer with acks=all"):
        producer_config(SETTINGS, overrides)


def test_consumer_commits_manually_whatever_the_overrides() -> None:
    config = consumer_config("g1", SETTINGS, {"enable.auto.commit": True, "fetch.min.bytes": 10})
    assert config["group.id"] == "g1"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["fetch.min.bytes"] == 10
    # Co-partitioned topics need the range assignor.
    assert config["partition.assignment.strategy"] == "range"


def test_headers_are_normalized_to_bytes() -> None:
    assert normalize_headers(None) == []
    assert normalize_headers({"a": "x", "b": b"y"}) == [("a", b"x"), ("b", b"y")]
    assert normalize_headers([("a", "x"), ("a", None)]) == [("a", b"x"), ("a", b"")]


def test_delivery_error_lists_failures_and_retryability() -> None:
    permanent = DeliveryFailure("t", b"k", "MSG_SIZE_TOO_LARGE", "too big", retriable=False)
    transient = DeliveryFailure("t", b"k", "_MSG_TIMED_OUT", "timed out", retriable=True)
    error = DeliveryError([permanent, transient])
    assert "2 failed" in str(error) and "MSG_SIZE_TOO_LARGE" in str(error)
    assert error.retryable is False
    assert DeliveryError([transient]).retryable is True
    assert error.error_class == "Delivery"


def test_many_failures_are_summarized() -> None:
    failures = [DeliveryFailure("t", None, "X", "r", False)] * 25
    assert "and 15 more" in str(DeliveryError(failures))


def test_retry_classification() -> None:
    assert is_retryable(RetryableError("later"))
    assert is_retryable(ServiceUnavailableError("down"))
    assert not is_retryable(NonRetryableError("never"))
    assert not is_retryable(MalformedRecordError("junk"))
    assert not is_retryable(ValueError("bug"))  # a bug would block the partition forever
    assert is_retryable(KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True)))


def test_error_class_strings() -> None:
    assert error_class_of(MalformedRecordError("x")) == "MalformedRecord"
    assert error_class_of(NonRetryableError("x", error_class="HttpStatus")) == "HttpStatus"
    assert error_class_of(KeyError("x")) == "KeyError"


def test_dead_letter_headers_carry_origin_and_original_headers() -> None:
    poison = PoisonRecord("p.runs", 3, 42, b"run-1", b"\x00junk", (("reflux-type", b"X"),))
    headers = dict(dead_letter_headers(poison, "MalformedRecord", "bad " * 500, "g"))
    assert headers["reflux-error-class"] == b"MalformedRecord"
    assert headers["reflux-origin"] == b"p.runs/3/42"
    assert headers["reflux-group"] == b"g"
    assert len(headers["reflux-reason"]) <= 512
    assert headers["reflux-original-reflux-type"] == b"X"


def test_consumed_record_header_lookup() -> None:
    record = ConsumedRecord(
        "t", 0, 1, None, None, (("reflux-type", b"a.B"), ("x", b"1"), ("x", b"2")), None, None
    )
    assert record.record_type == "a.B"
    assert record.header("x") == b"2"
    assert record.header("missing") is None
    assert record.poison().offset == 1


def test_cli_parses_topics_commands() -> None:
    parser = argparse.ArgumentParser(prog="reflux")
    add_topics_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topics", "create", "--prefix", "x", "--invoke", "http.request:1"])
    assert args.topics_action == "create"
    assert args.invoke == ["http.request:1"]
    assert callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["topics"])


def test_cli_rejects_bad_invoke_argument(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="reflux")
    add_topics_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topics", "list", "--invoke", "http.request"])
    assert args.handler(args, io.StringIO()) == 2
    assert "NODE:MAJOR" in capsys.readouterr().err


def test_render_table_aligns_columns() -> None:
    table = render_table([["topic", "status"], ["reflux.runs", "ok"], ["x", "missing"]])
    lines = table.splitlines()
    assert lines[0].startswith("topic        status")
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[3] == "x            missing"


def test_unreachable_broker_is_a_clear_service_error() -> None:
    from streams.admin import describe_topics
    from streams.topics import TopicCatalog

    settings = Settings(kafka_bootstrap="127.0.0.1:1", topic_prefix="unit")
    with pytest.raises(ServiceUnavailableError, match=r"127\.0\.0\.1:1.*make up"):
        describe_topics(TopicCatalog.from_settings(settings), settings=settings, timeout=1.0)


def test_producers_partition_like_the_java_client() -> None:
    # Co-partitioning across clients (faust/aiokafka, Java) needs murmur2 on every producer.
    from streams.producer import producer_config

    assert producer_config()["partitioner"] == "murmur2_random"


def test_close_is_bounded_by_its_timeout_when_the_broker_is_unreachable() -> None:
    """librdkafka's own close() flushes again without a bound (30 s measured): what the timeout
    did not deliver is purged, reported, and the close returns."""
    unreachable = Settings(kafka_bootstrap="127.0.0.1:1", topic_prefix="unit")
    producer = Producer(unreachable, config={"log_level": 0})
    producer.send("unit.t", "k", b"v")  # one record that cannot be delivered
    began = time.monotonic()
    with pytest.raises(DeliveryError, match="still in flight"):
        producer.close(0.5)
    assert time.monotonic() - began < 5


def test_retry_transient_retries_retriable_errors_only() -> None:
    from streams.consumer import retry_transient

    answers: list[object] = [
        KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, retriable=True)),
        KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, retriable=True)),
        (0, 10),
    ]

    def call() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry_transient(call, 5, backoff_s=0.01) == (0, 10)
    fatal = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    calls = []

    def refused() -> None:
        calls.append(1)
        raise fatal

    with pytest.raises(KafkaException):
        retry_transient(refused, 5, backoff_s=0.01)
    assert len(calls) == 1  # not retried
    began = time.monotonic()
    with pytest.raises(KafkaException):
        retry_transient(call_always_transient, 0.2, backoff_s=0.01)
    assert time.monotonic() - began < 2


def call_always_transient() -> None:
    raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, retriable=True))


def test_retry_transient_refreshes_before_each_retry() -> None:
    from streams.consumer import retry_transient

    failures = [KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, retriable=True))]
    refreshed: list[int] = []

    def call() -> str:
        if failures:
            raise failures.pop()
        return "ends"

    assert retry_transient(call, 5, refresh=lambda: refreshed.append(1), backoff_s=0.01) == "ends"
    assert refreshed == [1]
