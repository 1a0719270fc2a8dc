"""A Kafka broker of one test's own, for tests that restart the broker.

The suite shares one broker (``make up``) among parallel test processes; restarting it would
break every other test. A :class:`PrivateKafka` is the project's own broker service
(:class:`infra.services.kafka.Kafka`: same KRaft configuration template, same start and
readiness code) with its data, log and pid file in the test's folder, on a free port pair, and
the jars of the shared installation (no second Maven resolution). :func:`private_cluster` does
the same for a local cluster (:class:`infra.services.kafka_cluster.KafkaCluster`, ADR 0065).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foundation.settings import KAFKA_PORTS_PER_NODE, Settings, cluster_bootstrap
from infra.services.kafka import Kafka
from infra.services.kafka_cluster import KafkaCluster

__all__ = ["PrivateKafka", "free_port_pair", "free_ports", "private_cluster", "private_kafka"]


# Below Linux's ephemeral range (32768-60999 here): a port the kernel may hand to any outgoing
# connection can be taken between this probe and the broker's bind (seen: "Address already in
# use" for the chaos test's broker). Above the project's service ports (all below 20000).
_PORT_RANGE = (20000, 32000)


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` free (listener and KRaft controller)."""
    return free_ports(2)


def free_ports(count: int) -> int:
    """A port ``p`` with ``p`` .. ``p + count - 1`` free."""
    for _ in range(50):
        port = random.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)  # not a secret
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return port
    raise RuntimeError(f"Expected {count} free loopback ports in a row, but found none in 50 tries")


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


@contextmanager
def private_cluster(
    base: Settings, data_dir: Path, size: int = 3, **overrides: object
) -> Iterator[KafkaCluster]:
    """Starts a cluster of ``size`` nodes under ``data_dir`` on free ports, with the shared
    installation's jars; yields it (``.settings``: every node's bootstrap, replication
    min(3, size), ``kafka_brokers=size``, then ``overrides``); stops it."""
    port = free_ports(KAFKA_PORTS_PER_NODE * size)
    settings = base.model_copy(
        update={
            "kafka_bootstrap": cluster_bootstrap(port, size),
            "kafka_local_port": None,
            "kafka_brokers": size,
            "replication_factor": min(3, size),
            "data_dir": data_dir,
            **overrides,
        }
    )
    cluster = KafkaCluster(settings, size, jars_from=base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(timeout=10)  # its data is thrown away: no need to wait on a slow shutdown
