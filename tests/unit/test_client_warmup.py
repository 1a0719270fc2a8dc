"""streams.warmup: two metadata requests before a fresh client's first real one; one is enough
to give up on an unreachable cluster."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.warmup import WARM_UP_TIMEOUT_S, warm_up


class _Client:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str | None, float]] = []
        self.fail = fail

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> object:
        self.calls.append((topic, timeout))
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return object()


def test_two_requests_for_every_topic_each_waited_for() -> None:
    client = _Client()
    warm_up(client)
    # No topic named: asking a producer handle about a missing topic may create it.
    assert client.calls == [(None, WARM_UP_TIMEOUT_S), (None, WARM_UP_TIMEOUT_S)]


@pytest.mark.parametrize("timeout", [0.2, 3.0])
def test_an_unreachable_cluster_costs_one_timeout_and_raises_nothing(timeout: float) -> None:
    client = _Client(fail=True)
    warm_up(client, timeout)
    assert client.calls == [(None, timeout)]
