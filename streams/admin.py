"""Create and inspect the catalog's topics, idempotently and without ever touching data.

:func:`ensure_topics` creates what is missing, leaves matching topics alone and raises
:class:`TopicMismatchError` when an existing topic cannot be what the catalog says. It never
deletes a topic, adds partitions or alters configs: changing the partition count of a keyed topic
moves keys to other partitions (breaking per-run ordering and co-partitioning), and flipping
``cleanup.policy`` can erase history. Those are migrations a person decides on.

Other config drift (e.g. ``retention.ms`` changed by an operator) is reported, not fixed.

:func:`create_missing_topics` only makes sure topics exist (invoke topics, created when a node
version is registered and by the scheduler on first use): an existing topic is used as it is,
and a refusal is classified -- :class:`TopicRefusedError` (permanent: the name collides with
another topic, a policy or the cluster forbids it) or ``ServiceUnavailableError`` (the broker
cannot be reached or timed out: try again later).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# The admin package re-exports these without __all__; import from their defining modules so
# mypy --strict sees them.
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from foundation.errors import ConfigurationError, NonRetryableError, ServiceUnavailableError
from foundation.settings import Settings, get_settings
from streams.security import kafka_client_config
from streams.topics import TopicCatalog, TopicSpec, min_insync_replicas
from streams.warmup import warm_up

__all__ = [
    "EnsureReport",
    "TopicMismatch",
    "TopicMismatchError",
    "TopicRefusedError",
    "TopicState",
    "admin_client",
    "create_missing_topics",
    "creation_configs",
    "describe_topics",
    "ensure_topics",
]

TopicStatus = Literal["ok", "missing", "mismatch"]


@dataclass(frozen=True, slots=True)
class TopicMismatch:
    topic: str
    setting: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return (
            f"Expected topic {self.topic!r} to have {self.setting}={self.expected}, "
            f"but it has {self.setting}={self.actual}"
        )


class TopicMismatchError(ConfigurationError):
    """An existing topic contradicts the catalog in a way only a migration can fix."""

    error_class = "TopicMismatch"

    def __init__(self, mismatches: Sequence[TopicMismatch]) -> None:
        self.mismatches = tuple(mismatches)
        lines = "\n".join(f"  - {m}" for m in self.mismatches)
        super().__init__(
            f"{len(self.mismatches)} existing topic(s) do not match the catalog; nothing was "
            f"changed (fixing this needs a deliberate migration):\n{lines}"
        )


class TopicRefusedError(NonRetryableError):
    """The broker refuses to create a topic, and asking again will not change that."""

    error_class = "TopicRefused"


@dataclass(frozen=True, slots=True)
class TopicState:
    """A catalog spec next to what the broker has."""

    spec: TopicSpec
    exists: bool
    partitions: int | None = None
    replication: int | None = None
    configs: Mapping[str, str] = field(default_factory=dict)
    mismatches: tuple[TopicMismatch, ...] = ()
    """Partition count or cleanup.policy differ: fatal, never fixed automatically."""
    drift: tuple[TopicMismatch, ...] = ()
    """Other catalog configs or replication differ: reported only."""

    @property
    def status(self) -> TopicStatus:
        if not self.exists:
            return "missing"
        return "mismatch" if self.mismatches else "ok"


@dataclass(frozen=True, slots=True)
class EnsureReport:
    created: tuple[str, ...]
    unchanged: tuple[str, ...]
    drift: tuple[TopicMismatch, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created)


def admin_client(settings: Settings | None = None, *, warm: bool = False) -> AdminClient:
    """An admin client; with ``warm``, one whose first requests are answered at once
    (:func:`streams.warmup.warm_up`: without it, one fresh client's first ``list_offsets`` in
    five waited 1 or 3 s)."""
    settings = settings or get_settings()
    client = AdminClient({**kafka_client_config(settings), "socket.timeout.ms": 10000})
    if warm:
        warm_up(client)
    return client


def creation_configs(spec: TopicSpec, settings: Settings | None = None) -> dict[str, str]:
    """The configs a topic is created with: the catalog's, plus ``min.insync.replicas`` by
    :func:`streams.topics.min_insync_replicas` (a catalog value wins)."""
    configs = dict(spec.configs)
    isr = min_insync_replicas(spec.replication, (settings or get_settings()).min_insync_replicas)
    if isr is not None:
        configs.setdefault("min.insync.replicas", str(isr))
    return configs


def _unavailable(bootstrap: str, exc: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"Expected a Kafka broker at {bootstrap}, but it could not be reached ({exc}). "
        "Is it running? Try `make up` / `make status`."
    )


def _result(future: Future[Any], timeout: float) -> Any:
    return future.result(timeout=timeout)


def _bootstrap(settings: Settings | None) -> str:
    return (settings or get_settings()).kafka_bootstrap


def describe_topics(
    catalog: TopicCatalog,
    specs: Iterable[TopicSpec] | None = None,
    *,
    admin: AdminClient | None = None,
    settings: Settings | None = None,
    timeout: float = 10.0,
) -> list[TopicState]:
    """Compare each spec (default: every fixed catalog topic) with the broker."""
    specs = list(catalog if specs is None else specs)
    client = admin or admin_client(settings)
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _unavailable(_bootstrap(settings), exc) from exc

    existing = {s.topic: metadata.topics[s.topic] for s in specs if s.topic in metadata.topics}
    configs: dict[str, dict[str, str]] = {}
    if existing:
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in existing]
        try:
            futures = client.describe_configs(resources, request_timeout=timeout)
            for resource, future in futures.items():
                entries = _result(future, timeout)
                configs[resource.name] = {k: str(v.value) for k, v in entries.items()}
        except KafkaException as exc:
            raise _unavailable(_bootstrap(settings), exc) from exc

    states: list[TopicState] = []
    for spec in specs:
        meta = existing.get(spec.topic)
        if meta is None:
            states.append(TopicState(spec=spec, exists=False))
            continue
        partitions = len(meta.partitions)
        replication = min((len(p.replicas) for p in meta.partitions.values()), default=0)
        actual = configs.get(spec.topic, {})
        mismatches: list[TopicMismatch] = []
        drift: list[TopicMismatch] = []
        if partitions != spec.partitions:
            mismatches.append(
                TopicMismatch(spec.topic, "partitions", str(spec.partitions), str(partitions))
            )
        for key, expected in creation_configs(spec, settings).items():
            value = actual.get(key, "<unset>")
            if value != expected:
                target = mismatches if key == "cleanup.policy" else drift
                target.append(TopicMismatch(spec.topic, key, expected, value))
        if replication != spec.replication:
            drift.append(
                TopicMismatch(spec.topic, "replication", str(spec.replication), str(replication))
            )
        states.append(
            TopicState(
                spec=spec,
                exists=True,
                partitions=partitions,
                replication=replication,
                configs={k: actual[k] for k in sorted(actual)},
                mismatches=tuple(mismatches),
                drift=tuple(drift),
            )
        )
    return states


def ensure_topics(
    catalog: TopicCatalog,
    specs: Iterable[TopicSpec] | None = None,
    *,
    admin: AdminClient | None = None,
    settings: Settings | None = None,
    timeout: float = 15.0,
) -> EnsureReport:
    """Create the missing topics among ``specs`` (default: every fixed catalog topic).

    Checks everything before creating anything, so a mismatch leaves the cluster as it was.
    Safe to run concurrently: a topic created by someone else in between is verified, not
    recreated.
    """
    specs = list(catalog if specs is None else specs)
    client = admin or admin_client(settings)
    states = describe_topics(catalog, specs, admin=client, settings=settings, timeout=timeout)
    _raise_on_mismatch(states)

    missing = [s.spec for s in states if not s.exists]
    created: list[str] = []
    raced: list[TopicSpec] = []
    if missing:
        new_topics = [
            NewTopic(
                s.topic,
                num_partitions=s.partitions,
                replication_factor=s.replication,
                config=creation_configs(s, settings),
            )
            for s in missing
        ]
        futures = client.create_topics(
            new_topics, operation_timeout=timeout, request_timeout=timeout
        )
        by_name = {s.topic: s for s in missing}
        for name, future in futures.items():
            try:
                _result(future, timeout)
                created.append(name)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raced.append(by_name[name])
                    continue
                raise ConfigurationError(
                    f"Expected to create topic {name!r}, but the broker refused: {exc}"
                ) from exc
        _wait_for_leaders(client, created, timeout, settings)
    if raced:
        _raise_on_mismatch(
            describe_topics(catalog, raced, admin=client, settings=settings, timeout=timeout)
        )

    created_set = set(created)
    return EnsureReport(
        created=tuple(sorted(created_set)),
        unchanged=tuple(sorted(s.topic for s in specs if s.topic not in created_set)),
        drift=tuple(d for s in states for d in s.drift),
    )


def _raise_on_mismatch(states: Iterable[TopicState]) -> None:
    mismatches = [m for s in states for m in s.mismatches]
    if mismatches:
        raise TopicMismatchError(mismatches)


def _wait_for_leaders(
    client: AdminClient, topics: Sequence[str], timeout: float, settings: Settings | None
) -> None:
    """Creation is acknowledged before every partition has a leader; wait so callers can
    produce right away instead of racing the controller."""
    deadline = time.monotonic() + timeout
    pending = set(topics)
    while pending:
        try:
            metadata = client.list_topics(timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            raise _unavailable(_bootstrap(settings), exc) from exc
        led: dict[str, list[int]] = {}
        for name in pending:
            meta = metadata.topics.get(name)
            if (
                meta is not None
                and meta.error is None
                and meta.partitions
                and all(p.leader >= 0 and p.error is None for p in meta.partitions.values())
            ):
                led[name] = list(meta.partitions)
        pending -= _open_logs(client, led)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise ServiceUnavailableError(
                f"Expected leaders for new topics {sorted(pending)} within {timeout}s, "
                "but they have none yet"
            )
        time.sleep(0.05)


def _open_logs(client: AdminClient, partitions: Mapping[str, list[int]]) -> set[str]:
    """The topics whose every partition's leader answers where its log ends (one request): the
    log exists on the broker.

    In KRaft a partition has a leader in the metadata as soon as the controller records it; the
    leader creates the log a moment later, when it applies that record (0.25 s after the
    metadata on a loaded machine, seen in make test). A transactional producer that wrote to the
    partition in between had its record time out inside the transaction and its producer fenced.
    """
    if not partitions:
        return set()
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in the library
    futures = client.list_offsets(
        {TopicPartition(t, p): latest for t, ps in partitions.items() for p in ps},
        request_timeout=5,
    )
    closed: set[str] = set()
    for tp, future in futures.items():
        try:
            if int(future.result().offset) < 0:
                closed.add(tp.topic)
        except KafkaException:  # not yet (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, ...)
            closed.add(tp.topic)
    return set(partitions) - closed


def kafka_unavailable(exc: BaseException) -> bool:
    """A ``KafkaException`` a new attempt may not meet: retriable, or one of librdkafka's local
    errors (a dropped connection, a timeout) -- :func:`_transient_kafka_error`."""
    return (
        isinstance(exc, KafkaException)
        and bool(exc.args)
        and isinstance(exc.args[0], KafkaError)
        and _transient_kafka_error(exc.args[0])
    )


def _transient_kafka_error(error: KafkaError) -> bool:
    # librdkafka's own (negative) codes are local: transport, timeouts, resolution.
    return error.retriable() or error.code() < 0 or error.code() == KafkaError.REQUEST_TIMED_OUT


def create_missing_topics(
    specs: Iterable[TopicSpec],
    *,
    admin: AdminClient | None = None,
    settings: Settings | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """Create those of ``specs`` that do not exist; returns the names created now.

    Existing topics are left as they are, whatever their partitions or configs (use
    :func:`ensure_topics` to check those). Safe to run concurrently: a topic created by someone
    else in between counts as existing. Raises :class:`TopicRefusedError` when the broker
    refuses a topic for good, ``ServiceUnavailableError`` when it cannot answer.
    """
    specs = list(specs)
    client = admin or admin_client(settings)
    missing: list[TopicSpec] = []
    for spec in specs:
        try:
            metadata = client.list_topics(topic=spec.topic, timeout=timeout)
        except KafkaException as exc:
            raise _unavailable(_bootstrap(settings), exc) from exc
        meta = metadata.topics.get(spec.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            missing.append(spec)
    if not missing:
        return []
    new_topics = [
        NewTopic(
            s.topic,
            num_partitions=s.partitions,
            replication_factor=s.replication,
            config=creation_configs(s, settings),
        )
        for s in missing
    ]
    futures = client.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    created: list[str] = []
    for name, future in futures.items():
        try:
            _result(future, timeout)
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not isinstance(error, KafkaError):
                raise _unavailable(_bootstrap(settings), exc) from exc
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if _transient_kafka_error(error):
                raise _unavailable(_bootstrap(settings), exc) from exc
            raise TopicRefusedError(
                f"Expected to create topic {name!r}, but the broker refused: "
                f"{error.name()}: {error.str()}"
            ) from exc
        except TimeoutError as exc:
            raise _unavailable(_bootstrap(settings), exc) from exc
    _wait_for_leaders(client, created, timeout, settings)
    return sorted(created)
