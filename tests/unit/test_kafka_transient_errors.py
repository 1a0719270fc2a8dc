"""Which Kafka client errors `ensure_scram_user` asks again (a node started a moment ago dropped
the request with _DESTROY_BROKER and failed a cluster's start in make test)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from streams.admin import kafka_unavailable as _transient


def test_dropped_connections_and_timeouts_are_asked_again() -> None:
    for code in (KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
        assert _transient(KafkaException(KafkaError(code)))


def test_a_refusal_or_another_exception_is_not() -> None:
    assert not _transient(KafkaException(KafkaError(KafkaError.SASL_AUTHENTICATION_FAILED)))
    assert not _transient(ValueError("no"))
    assert not _transient(KafkaException("not a KafkaError"))
