"""Workers publish the node versions they serve to the catalog (``nodes``) when they start.

For each served node the worker uploads its manifest (flags, input/output JSON schemas) to the
object store at ``nodes/<name>/<version>/manifest.json`` -- the packaged artifact of a built-in
node; generated or user code would sit next to it -- and publishes a ``NodeCatalogEntry`` with
``code_uri`` pointing there.

Register-if-absent: a version the catalog already knows is left alone. The catalog is operated
through the API (promote, deprecate, rollout weights); a worker restart must not undo an
operator's deprecation or weight change. Two workers starting at once may both publish the same
first entry, which is harmless (same content; the projector and the scheduler keep the last).
Built-ins register as ``production`` with weight 1 by default (a single version per node takes
every run either way); ``status``/``rollout_weight`` let a deployment start a new build as
``staging`` or dark (weight 0) instead.

Registering also creates the invoke topic of each served node major when it is missing
(:func:`streams.admin.create_missing_topics`), so invocations never wait for a topic that only
some other process would have created (the scheduler also creates it on first use).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from foundation.objectstore import BlobStore, S3BlobStore
from foundation.settings import Settings
from node_workers.node import AnyNode
from schemas import decode
from schemas.base import canonical_json
from schemas.errors import SchemaError
from schemas.models import NodeCatalogEntry, NodeStatus
from streams.admin import create_missing_topics
from streams.consumer import retry_transient
from streams.producer import Producer
from streams.security import kafka_client_config
from streams.topics import TopicCatalog

__all__ = [
    "DEFAULT_STATUS",
    "RegistrationResult",
    "catalog_entry",
    "manifest_key",
    "read_catalog_entries",
    "read_catalog_keys",
    "register_nodes",
]

log = logging.getLogger(__name__)

DEFAULT_STATUS = NodeStatus.PRODUCTION


def manifest_key(name: str, version: str) -> str:
    """Object-store key of a node version's packaged manifest."""
    return f"nodes/{name}/{version}/manifest.json"


def catalog_entry(
    node: AnyNode,
    *,
    status: NodeStatus = DEFAULT_STATUS,
    rollout_weight: float = 1.0,
    code_uri: str | None = None,
) -> NodeCatalogEntry:
    return NodeCatalogEntry(
        name=node.name,
        version=node.version,
        status=status,
        rollout_weight=rollout_weight,
        manifest=node.manifest(),
        code_uri=code_uri,
    )


def read_catalog_keys(settings: Settings, catalog: TopicCatalog, timeout: float = 10.0) -> set[str]:
    """Every ``node@version`` on the compacted ``nodes`` topic, read to the high watermarks."""
    return set(read_catalog_entries(settings, catalog, timeout))


_LEADER_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def _leader_moving(exc: BaseException) -> bool:
    """librdkafka does not flag these retriable on a watermark query, but they pass."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].code() in _LEADER_ERRORS or bool(exc.args[0].retriable())
    return False


def read_catalog_entries(
    settings: Settings, catalog: TopicCatalog, timeout: float = 10.0
) -> dict[str, NodeCatalogEntry]:
    """The last entry of every ``node@version`` on the compacted ``nodes`` topic, read to the
    high watermarks (the artifact worker and ``publish_artifact`` need the manifests too)."""
    topic = catalog.nodes.topic
    consumer = Consumer(
        {
            **kafka_client_config(settings),
            "group.id": f"{settings.topic_prefix}.worker-registration-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    entries: dict[str, NodeCatalogEntry] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        targets: dict[int, int] = {}
        for p in partitions:
            # A topic created moments ago answers NOT_LEADER_FOR_PARTITION for a while.
            _, high = retry_transient(
                functools.partial(
                    consumer.get_watermark_offsets, TopicPartition(topic, p), timeout=5
                ),
                timeout,
                refresh=functools.partial(consumer.list_topics, topic, timeout=5),
                transient=_leader_moving,
            )
            if high > 0:
                targets[p] = high
        if not targets:
            return entries
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in targets])
        deadline = time.monotonic() + timeout
        done: set[int] = set()
        while len(done) < len(targets) and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.2):
                if message.error() is not None or message.value() is None:
                    continue
                try:
                    record = decode(message.value() or b"", NodeCatalogEntry)
                except SchemaError:
                    continue
                entries[f"{record.name}@{record.version}"] = record
            for tp in consumer.position([TopicPartition(topic, p) for p in targets]):
                if tp.offset >= targets[tp.partition]:
                    done.add(tp.partition)
        if len(done) < len(targets):
            log.warning("read the node catalog only partly within %.0fs", timeout)
    finally:
        consumer.close()
    return entries


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    published: list[str]
    """``node@version`` keys published now."""
    skipped: list[str]
    """Keys the catalog already had (left as the operators set them)."""
    topics_created: list[str] = field(default_factory=list)
    """Invoke topics that were missing and were created now."""


def register_nodes(
    settings: Settings,
    nodes: Iterable[AnyNode],
    *,
    status: NodeStatus = DEFAULT_STATUS,
    rollout_weight: float = 1.0,
    blobs: BlobStore | None = None,
    producer: Producer | None = None,
    catalog: TopicCatalog | None = None,
) -> RegistrationResult:
    """Upload manifests and publish catalog entries for the versions the catalog lacks, and
    create the served majors' invoke topics that are missing."""
    nodes = list(nodes)
    catalog = catalog or TopicCatalog.from_settings(settings)
    topics_created = create_missing_topics(
        {catalog.invoke_topic(n.name, n.major) for n in nodes}, settings=settings
    )
    blobs = blobs or S3BlobStore(settings)
    known = read_catalog_keys(settings, catalog)
    own = producer is None
    producer = producer or Producer(settings, client_id="reflux-worker-registration")
    published: list[str] = []
    skipped: list[str] = []
    try:
        for node in nodes:
            if node.key in known:
                skipped.append(node.key)
                continue
            manifest = canonical_json(node.manifest()).encode()
            uri = blobs.put(manifest_key(node.name, node.version), manifest, "application/json")
            entry = catalog_entry(node, status=status, rollout_weight=rollout_weight, code_uri=uri)
            producer.send(catalog.nodes, node.key, entry)
            published.append(node.key)
        producer.flush(30)
    finally:
        if own:
            producer.close()
    if published:
        log.info("registered %s in the node catalog as %s", published, status.value)
    if topics_created:
        log.info("created invoke topics %s", topics_created)
    return RegistrationResult(published, skipped, topics_created)
