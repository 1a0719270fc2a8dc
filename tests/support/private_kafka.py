"""A Kafka broker of one test's own, for tests that restart the broker.

The suite shares one broker (``make up``) among parallel test processes; restarting it would
break every other test. A :class:`PrivateKafka` is the project's own broker service
(:class:`infra.services.kafka.Kafka`: same KRaft configuration template, same start and
readiness code) with its data, log and pid file in the test's folder, on a free port pair, and
the jars of the shared installation (no second Maven resolution).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foundation.settings import Settings
from infra.services.kafka import Kafka

__all__ = ["PrivateKafka", "free_port_pair", "private_kafka"]


# Below Linux's ephemeral range (32768-60999 here): a port the kernel may hand to any outgoing
# connection can be taken between this probe and the broker's bind (seen: "Address already in
# use" for the chaos test's broker). Above the project's service ports (all below 20000).
_PORT_RANGE = (20000, 32000)


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free (listener and KRaft controller)."""
    for _ in range(50):
        port = random.randrange(*_PORT_RANGE)  # not a secret: a port to try
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("Expected a free pair of loopback ports, but found none in 50 tries")


class PrivateKafka(Kafka):
    def __init__(self, settings: Settings, jars_from: Settings) -> None:
        super().__init__(settings)
        self._libs = Kafka(jars_from).libs

    @property
    def libs(self) -> Path:
        return self._libs

    def restart(self) -> tuple[float, float]:
        """Controlled shutdown, then start; returns (seconds stopping, seconds starting)."""
        began = time.monotonic()
        before = self.read_pid()
        self.stop()
        stopped = time.monotonic()
        self.start()
        after = self.read_pid()
        assert after is not None and after != before, f"broker pid {before} -> {after}"
        return stopped - began, time.monotonic() - stopped


@contextmanager
def private_kafka(base: Settings, data_dir: Path, **overrides: object) -> Iterator[PrivateKafka]:
    """Starts a broker under ``data_dir``; yields it (``.settings`` points at it); stops it."""
    port = free_port_pair()
    settings = base.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{port}", "data_dir": data_dir, **overrides}
    )
    broker = PrivateKafka(settings, jars_from=base)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
