"""One thing every fresh Kafka client here does first: learn the cluster, on the right connection.

librdkafka (2.9 and 2.16 alike) opens a *bootstrap* connection, asks it for metadata, and closes
it as soon as the answer names the real brokers; the real broker's connection opens only when a
request needs it. A request made in that window fails and is asked again only on a timer:

- an idempotent producer's first message waits 0.5-1.0 s for its producer id (the id request
  found no broker up and waits 500 ms to try again) -- every fresh producer, measured 8 of 8;
- a transactional producer's ``init_transactions`` took 0.5 s in 4 of 30;
- an admin client's first ``list_offsets`` took 1.00 or 3.00 s in 3 of 15 (the scheduler's
  restart stalled exactly that long).

Two metadata requests, answered before anything else is asked, close the window: the first is
served by the bootstrap connection, the second by the real broker's, which is then up. Measured:
first message 0.054 s in 8 of 8, ``init_transactions`` 0.003-0.010 s after ~0.055 s of warm-up
in 30 of 30, ``list_offsets`` ~2 ms in 30 of 30. A failed request ends the warm-up (an
unreachable cluster costs it one timeout); errors are ignored: the client's own requests report
an unreachable cluster with their own timeouts and messages.
"""

from __future__ import annotations

from typing import Final, Protocol

from confluent_kafka import KafkaException

__all__ = ["WARM_UP_TIMEOUT_S", "warm_up"]

WARM_UP_TIMEOUT_S: Final = 1.0
"""Per metadata request (answered in ~55 ms here); what an unreachable cluster costs a client's
warm-up, once."""


class _MetadataClient(Protocol):
    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> object: ...


def warm_up(client: _MetadataClient, timeout: float = WARM_UP_TIMEOUT_S) -> None:
    """Two cluster metadata requests, each waited for (see the module docstring). Every topic's
    metadata, not one topic's: asking a producer handle about a missing topic may create it on a
    broker that creates topics on demand."""
    for _ in range(2):
        try:
            client.list_topics(timeout=timeout)
        except KafkaException:
            return
