"""Partition ends read on a connection of their own.

Why not the reading consumer's own ``get_watermark_offsets``: a consumer that is fetching keeps
a long-poll Fetch outstanding on each broker connection (``fetch.wait.max.ms``, 500 ms), and a
broker answers one request per connection at a time, so every offsets request queues behind it:
measured 0.50 s per partition on an assigned consumer against 0.001 s on an idle one. A reader
of 36 partitions took 18 s to learn where "caught up" is.

:class:`WatermarkReader` is that idle consumer: never assigned, never subscribed, no group
joined, with the caller's isolation level (``read_committed`` ends are the last stable
offsets, which is what a transactional reader can reach).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from foundation.closing import Closing
from foundation.errors import ServiceUnavailableError
from streams.consumer import retry_transient

__all__ = ["WatermarkReader"]


class WatermarkReader(Closing):
    """``(low, high)`` of partitions; one idle client, made on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        """``config``: the reading consumer's; its connection and security settings and its
        isolation level are kept, nothing that would make this client fetch or join."""
        self._config = {**config, "client.id": f"{config.get('client.id', 'reflux')}-watermarks"}
        self._config.pop("on_commit", None)
        self._consumer: Consumer | None = None

    def ends(
        self, partitions: Iterable[tuple[str, int]], timeout: float = 10.0
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Each partition's ``(low, high)`` as the broker has it now (not cached).

        Raises :class:`ServiceUnavailableError` naming the partition Kafka did not answer for.
        """
        consumer = self._client()
        marks: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, partition in partitions:
            try:
                low, high = retry_transient(
                    functools.partial(
                        consumer.get_watermark_offsets,
                        TopicPartition(topic, partition),
                        timeout=timeout,
                        cached=False,
                    ),
                    timeout,
                    refresh=functools.partial(consumer.list_topics, topic, timeout=5),
                )
            except KafkaException as exc:
                raise ServiceUnavailableError(
                    f"Expected the watermarks of {topic}/{partition}, but: {exc}"
                ) from exc
            marks[(topic, partition)] = (low, high)
        return marks

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()
