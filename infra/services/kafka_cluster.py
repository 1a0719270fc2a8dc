"""A local Kafka cluster: ``size`` KRaft nodes on loopback (``make up CLUSTER=3``, ADR 0065).

Every node is a :class:`~infra.services.kafka.Kafka` service (broker and controller, one of
``size`` quorum voters, one cluster id) with its own data, pid file and log under
``var/kafka-cluster/node-k``; node k listens on base + 3(k-1) (PLAINTEXT), + 1 (controller),
+ 2 (SASL_SSL, the same CA, certificate and SCRAM user as the single broker). Internal topics
and new topics get 3 replicas and ``min.insync.replicas=2``.

A quorum answers only once a majority of voters runs, so the nodes are launched together and
waited for together: the cluster is ready when every node is registered as a broker. The
single broker and the cluster never run from one data folder at the same time (each refuses to
start beside the other). The tests and the benchmark use :meth:`kill9`, :meth:`start_node`
and :meth:`wait_in_sync` to fail brokers under load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import ClassVar

from foundation.settings import Settings
from infra.services.base import (
    Service,
    ServiceError,
    ServiceStatus,
    pid_alive,
    tail_of,
    wait_until,
)
from infra.services.kafka import Kafka

__all__ = ["KafkaCluster"]


class KafkaCluster(Service):
    name = "kafka"
    debian_packages: ClassVar[dict[str, str]] = Kafka.debian_packages

    def __init__(
        self, settings: Settings, size: int = 3, *, jars_from: Settings | None = None
    ) -> None:
        super().__init__(settings)
        if size < 2:
            raise ServiceError(f"Expected a cluster of at least 2 nodes, but got {size}")
        self.size = size
        self.nodes: list[Kafka] = [
            Kafka(settings, node=k, cluster_size=size, jars_from=jars_from)
            for k in range(1, size + 1)
        ]
        self.root = self.nodes[0].cluster_id_file.parent
        self.log_file = self.nodes[0].log_file
        host = self.nodes[0].host_port[0]
        self.bootstrap = ",".join(f"{host}:{n.host_port[1]}" for n in self.nodes)

    @property
    def endpoint(self) -> str:
        return f"{self.bootstrap} (SASL_SSL +2 each)"

    def node(self, node: int) -> Kafka:
        if not 1 <= node <= self.size:
            raise ServiceError(f"Expected a node between 1 and {self.size}, but got {node}")
        return self.nodes[node - 1]

    def install(self) -> None:
        self.nodes[0].install()

    def start_timeout(self) -> float:
        return 120.0

    def _refuse_single_broker(self) -> None:
        single = Kafka(self.settings)
        pid = single.read_pid()
        if pid is not None:
            raise ServiceError(
                f"The single Kafka broker runs from {self.settings.data_dir} (pid {pid}, "
                f"{single.endpoint}); the single broker and a cluster never run together. "
                "Stop it first: `make down` (or python -m infra.stack down kafka without "
                "REFLUX_KAFKA_BROKERS), then start the cluster again."
            )

    def start(self) -> float:
        """Starts every node that is not running and waits until all are registered brokers;
        returns the seconds spent (0: all were running)."""
        self._refuse_single_broker()
        self.install()
        began = time.monotonic()
        launched = self._begin_nodes()
        wait_until(
            self._ready_or_died,
            self.start_timeout(),
            f"Kafka cluster {self.bootstrap}",
            None,
            lambda: self.last_probe_error,
        )
        self.nodes[0].ensure_scram_user()
        return time.monotonic() - began if launched else 0.0

    def launch(self) -> None:
        self._begin_nodes()

    def _begin_nodes(self) -> bool:
        """Launches every node that is not running, without waiting; True if any was."""
        first = self.nodes[0]
        first.ensure_tls()
        first.cluster_id()  # written once before the nodes format their storage with it
        first.scram_password()
        launched: list[bool] = []
        failures: list[BaseException] = []

        def begin(node: Kafka) -> None:
            try:
                launched.append(node.begin())
            except BaseException as exc:  # reported after every thread has ended
                failures.append(exc)

        # In parallel: each node formats its storage (a JVM start) before it is spawned.
        threads = [threading.Thread(target=begin, args=(n,), daemon=True) for n in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return any(launched)

    def _ready_or_died(self) -> bool:
        if self.is_ready():
            return True
        for node in self.nodes:
            if not node.is_running():
                time.sleep(0.5)  # the pid file may be written a moment after the spawn
                if not node.is_running():
                    raise ServiceError(f"{node.name} exited during start.{tail_of(node.log_file)}")
        return False

    def stop(self, timeout: float = 30.0) -> bool:
        """Stops every node at once (each needs the others' quorum for its controlled
        shutdown; one after the other, the last would wait for a quorum that is gone)."""
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda n=node: results.append(n.stop(timeout)), daemon=True)
            for node in self.nodes
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return any(results)

    def read_pid(self) -> int | None:
        """Node 1's pid (``stack status`` shows every node's: :meth:`statuses`)."""
        return self.nodes[0].read_pid()

    def is_running(self) -> bool:
        return any(node.is_running() for node in self.nodes)

    def brokers(self) -> set[int]:
        """The node ids the cluster's metadata lists as brokers (empty: no answer)."""
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
            return set(admin.list_topics(timeout=2).brokers)
        except Exception as exc:
            self.last_probe_error = str(exc)
            return set()

    def is_ready(self) -> bool:
        found = self.brokers()
        ready = found == set(range(1, self.size + 1))
        if not ready:
            self.last_probe_error = f"brokers registered: {sorted(found)} of {self.size}"
        return ready

    def status(self) -> ServiceStatus:
        pid = self.read_pid()
        ready = self.is_ready() if self.is_running() else False
        return ServiceStatus(self.name, pid is not None, ready, self.endpoint, pid, self.detail())

    def statuses(self) -> list[ServiceStatus]:
        return [node.status() for node in self.nodes]

    def detail(self) -> str:
        return f"KRaft cluster of {self.size}, data {self.root}"

    # -- failing nodes (tests, benchmark) -------------------------------------------------
    def kill9(self, node: int) -> int:
        """SIGKILL node ``node`` (1-based); returns its pid once it is gone."""
        target = self.node(node)
        pid = target.read_pid()
        if pid is None:
            raise ServiceError(f"{target.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 30, f"{target.name} (pid {pid}) gone")
        return pid

    def start_node(self, node: int) -> float:
        """(Re)starts node ``node``; returns the seconds until the cluster lists it again."""
        target = self.node(node)
        began = time.monotonic()
        target.start()
        wait_until(
            lambda: node in self.brokers(),
            target.start_timeout(),
            f"{target.name} registered again",
            target.log_file,
        )
        return time.monotonic() - began

    def under_replicated(self) -> list[str]:
        """Partitions (``topic/partition``) with fewer in-sync replicas than replicas, or no
        leader, in the view of any running node. Each node is asked on its own: a node that
        just restarted serves its metadata cache before catching up with the controller, so
        one node saying "in sync" does not mean the next request, answered by another, will."""
        from confluent_kafka.admin import AdminClient

        found: set[str] = set()
        for node in self.nodes:
            if not node.is_running():
                continue
            # A fresh client knows only its bootstrap broker, so it asks that node.
            host, port = node.host_port
            admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "log_level": 0})
            metadata = admin.list_topics(timeout=5)
            found.update(
                f"{topic.topic}/{partition.id}"
                for topic in metadata.topics.values()
                for partition in topic.partitions.values()
                if len(partition.isrs) < len(partition.replicas) or partition.leader < 0
            )
        return sorted(found)

    def wait_in_sync(self, timeout: float) -> None:
        """Waits until no partition is under-replicated (or leaderless)."""
        left: list[str] = []

        def in_sync() -> bool:
            nonlocal left
            try:
                left = self.under_replicated()
            except Exception as exc:
                left = [f"metadata: {exc}"]
            return not left

        wait_until(
            in_sync, timeout, "Kafka cluster in sync", None, lambda: f"{len(left)}: {left[:10]}"
        )
