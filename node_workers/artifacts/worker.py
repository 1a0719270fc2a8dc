"""The generic artifact worker group: ``reflux worker --artifacts``.

It follows the node catalog (the compacted ``nodes`` topic) and serves every registered
artifact version that is not deprecated: one lane per node major (consumer group
``<prefix>.workers.<name>.v<major>``, as for compiled nodes), answering each invocation with the
version it names (:meth:`ArtifactMajorNode.for_invocation`). A new version of a served major is
picked up in place; a new major (or one gone) restarts the lanes with the new set -- in-flight
attempts finish first (the runtime's graceful stop), and invocations wait on Kafka meanwhile.

One attempt (:class:`ArtifactService`):

1. load the artifact by the digest the catalog names (cached by digest; the bytes' SHA-256 is
   verified on every load from the store: ``ArtifactDigestMismatch``);
2. validate the params against ``input_schema`` (``InputSchemaViolation``, field path);
3. resolve the secrets named in ``manifest.secrets`` -- only those -- through the secrets store
   and the grants of the run's tenant and workflow (node_workers/secrets);
4. run ``run(input, ctx)`` in the code.run sandbox with the manifest's limits (bounded by the
   worker's sandbox maxima) and the attempt's deadline, with the egress proxy on its socket
   when the manifest declares egress (node_workers/artifacts/egress_proxy.py);
5. validate the output against ``output_schema`` (``OutputSchemaViolation``, non-retryable),
   or map the guest's error: its ``NodeFailure`` class and retryability, ``EgressDenied``,
   ``SandboxPolicy``, ``NodeCodeError``; no answer at all is ``CodeTimeout`` (retryable) or
   ``NodeCodeError`` with the log's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import BaseModel, ConfigDict, RootModel

from foundation.errors import RefluxError
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.artifacts.bundle import NodeArtifact
from node_workers.artifacts.egress_proxy import EgressProxy
from node_workers.artifacts.execution import ArtifactSandbox, EgressFactory, GuestRun
from node_workers.artifacts.publish import manifest_digest
from node_workers.artifacts.store import ArtifactStore
from node_workers.egress.net import OperatorPolicy
from node_workers.node import (
    AnyNode,
    Node,
    NodeContext,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)
from node_workers.runtime import WorkerConfig, WorkerRuntime
from node_workers.secrets import SecretResolver, resolver_from_settings
from node_workers.secrets.destinations import SecretDestinations
from schemas import decode
from schemas.errors import SchemaError
from schemas.models import NodeCatalogEntry, NodeInvocation, NodeStatus
from streams.security import kafka_client_config
from streams.topics import TopicCatalog
from workflows.node_io import field_path
from workflows.semver import Version

__all__ = [
    "ArtifactMajorNode",
    "ArtifactService",
    "ArtifactWorker",
    "CatalogFollower",
    "guest_error",
    "schema_violation",
    "served_versions",
]

log = logging.getLogger(__name__)

_CACHE_SIZE: Final = 256
_LOG_TAIL: Final = 1500
# Left of the attempt's deadline for reading the answer after the sandbox ends.
_MARGIN_S: Final = 1.0
# How long an invocation of a version this worker has not read in the catalog yet waits for it.
_CATALOG_WAIT_S: Final = 10.0


class ArtifactParams(BaseModel):
    """Any JSON object: the artifact's own ``input_schema`` is what checks it."""

    model_config = ConfigDict(extra="allow")


class ArtifactOutput(RootModel[Any]):
    """The output as the code returned it, checked against ``output_schema``."""


def schema_violation(schema: dict[str, Any], value: Any, root: str) -> str | None:
    """``root.field.path: message`` of the most relevant violation, or None (pure)."""
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    return f"{field_path(error.absolute_path, root)}: {error.message}"


def guest_error(
    run: GuestRun, node: str, timeout_s: float
) -> RetryableNodeError | NonRetryableNodeError | None:
    """The attempt's error for a guest answer that is not ``ok`` (pure); None when it is."""
    answer = run.answer
    if answer is not None and answer.get("ok") is True:
        return None
    if answer is not None:
        error_class = str(answer.get("error_class") or "NodeCodeError")
        message = f"{node}: {answer.get('message') or error_class}"
        if answer.get("retryable") is True:
            return RetryableNodeError(message, error_class=error_class)
        return NonRetryableNodeError(message, error_class=error_class)
    tail = run.logs[-_LOG_TAIL:].strip()
    text = f"{node}: {run.problem or 'the sandbox gave no answer'}"
    if tail:
        text += f"; logs end with:\n{tail}"
    if run.timed_out:
        return RetryableNodeError(text, error_class="CodeTimeout")
    return NonRetryableNodeError(text, error_class="NodeCodeError")


def served_versions(entries: dict[str, NodeCatalogEntry]) -> dict[str, NodeCatalogEntry]:
    """The catalog entries the artifact worker serves: artifacts, not deprecated (pure)."""
    return {
        key: entry
        for key, entry in entries.items()
        if manifest_digest(entry.manifest) is not None and entry.status != NodeStatus.DEPRECATED
    }


@dataclass
class ArtifactService:
    """What every artifact attempt of one worker process shares."""

    settings: Settings
    sandbox: ArtifactSandbox
    store: ArtifactStore
    secrets: SecretResolver
    policy: OperatorPolicy = field(default_factory=OperatorPolicy)
    _cache: OrderedDict[str, NodeArtifact] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _executor: ThreadPoolExecutor | None = None
    loads: int = 0
    """Artifacts fetched from the store (cache misses), for tests and metrics."""

    @classmethod
    def from_settings(
        cls, settings: Settings, *, secrets: SecretResolver | None = None
    ) -> ArtifactService:
        service = cls(
            settings,
            ArtifactSandbox(settings),
            ArtifactStore.from_settings(settings),
            secrets if secrets is not None else resolver_from_settings(settings),
        )
        service.policy.bind(settings)
        return service

    def load(self, digest: str, uri: str | None) -> NodeArtifact:
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                return cached
        artifact = self.store.get(digest, uri)  # verifies the digest
        with self._lock:
            self.loads += 1
            self._cache[digest] = artifact
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return artifact

    def set_parallel_runs(self, runs: int) -> None:
        with self._lock:
            executor, self._executor = (
                self._executor,
                ThreadPoolExecutor(max_workers=max(runs, 1), thread_name_prefix="artifact-sandbox"),
            )
        if executor is not None:
            executor.shutdown(wait=False)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="artifact-sandbox"
                )
            return self._executor

    async def run(
        self,
        entry: NodeCatalogEntry,
        params: Any,
        ctx: NodeContext,
        *,
        workflow_version: int | None,
    ) -> Any:
        key = f"{entry.name}@{entry.version}"
        digest = manifest_digest(entry.manifest)
        if digest is None:
            raise NonRetryableNodeError(
                f"Expected {key} in the catalog to name an artifact digest, but it does not",
                error_class="InvalidArtifact",
            )
        artifact = await asyncio.to_thread(self.load, digest, entry.code_uri)
        manifest = artifact.manifest
        problem = schema_violation(manifest.input_schema, params, "params")
        if problem is not None:
            raise NonRetryableNodeError(f"{key}: {problem}", error_class="InputSchemaViolation")
        values: dict[str, str] = {}
        destinations = SecretDestinations()
        if manifest.secrets:
            placeholders = {name: f"{{{{ secrets.{name} }}}}" for name in manifest.secrets}
            values, destinations = await asyncio.to_thread(
                self.secrets.resolve_with_destinations,
                placeholders,
                workflow_id=ctx.workflow_id,
                workflow_version=workflow_version,
                tenant=ctx.tenant,
            )
        timeout = manifest.limits.timeout_s
        remaining = ctx.remaining_s()
        if remaining is not None:
            timeout = max(min(timeout, remaining - _MARGIN_S), 0.1)
        egress: EgressFactory | None = None
        proxy: EgressProxy | None = None
        if manifest.egress:
            proxy = EgressProxy.for_manifest(
                key,
                manifest.egress,
                self.policy.for_call(workflow_id=ctx.workflow_id, tenant=ctx.tenant),
                secrets=destinations,
                timeout_s=timeout,
            )
            egress = proxy.serve
        cancel = threading.Event()
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self._pool(),
            lambda: self.sandbox.run_job(
                artifact,
                mode="run",
                params=params,
                secrets=values,
                timeout_s=timeout,
                egress=egress,
                cancel=cancel,
            ),
        )
        try:
            run = await future
        except asyncio.CancelledError:
            cancel.set()  # the sandbox thread kills the job within ~20 ms
            raise
        ctx.record("sandbox_ms", round((time.monotonic() - started) * 1000, 3))
        if proxy is not None:
            ctx.record("egress_requests", proxy.requests)
            ctx.record("egress_denied", len(proxy.denied))
        if run.logs.strip():
            ctx.logger.info("%s logs:\n%s", key, run.logs[-_LOG_TAIL:].rstrip())
        error = guest_error(run, key, timeout)
        if error is not None:
            raise error
        assert run.answer is not None
        output = run.answer.get("output")
        problem = schema_violation(manifest.output_schema, output, "output")
        if problem is not None:
            raise NonRetryableNodeError(f"{key}: {problem}", error_class="OutputSchemaViolation")
        return output

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self.sandbox.close()


class ArtifactVersionNode(Node[ArtifactParams, ArtifactOutput]):
    """One artifact version, for one invocation (it knows the run's workflow version)."""

    Input = ArtifactParams
    Output = ArtifactOutput
    workload = Workload.CPU

    def __init__(
        self,
        name: str,
        version: str,
        entry: NodeCatalogEntry | None,
        service: ArtifactService,
        *,
        workflow_version: int | None = None,
        lookup: Callable[[str], NodeCatalogEntry | None] | None = None,
    ) -> None:
        self.name = name
        self.lookup = lookup
        self.version = version
        self.entry = entry
        self.service = service
        self.workflow_version = workflow_version
        manifest = entry.manifest if entry is not None and isinstance(entry.manifest, dict) else {}
        self.description = str(manifest.get("description", ""))
        self.side_effects = bool(manifest.get("side_effects", False))

    async def execute(self, params: ArtifactParams, ctx: NodeContext) -> ArtifactOutput:
        waited = 0.0
        while self.entry is None and self.lookup is not None and waited < _CATALOG_WAIT_S:
            # The scheduler dispatched a version it read in the catalog; this worker reads the
            # same topic and is about to see it (observed: up to ~1 s behind).
            await asyncio.sleep(0.1)
            waited += 0.1
            self.entry = self.lookup(self.version)
        if self.entry is None:
            # Still unknown: a later attempt (the step's retry policy) may find it.
            raise RetryableNodeError(
                f"Expected {self.key} among the artifact versions this worker serves, but the "
                "catalog it has read does not have it yet",
                error_class="ArtifactNotServed",
            )
        if self.entry.tenant not in (DEFAULT_TENANT, ctx.tenant):
            # The scheduler resolves only versions the run's tenant may use; a worker that
            # serves every tenant's artifacts checks again rather than trust the invocation.
            raise NonRetryableNodeError(
                f"Expected a version of tenant {ctx.tenant!r} or the platform's, but {self.key} "
                f"belongs to tenant {self.entry.tenant!r}",
                error_class="NodeVersionUnavailable",
            )
        output = await self.service.run(
            self.entry,
            params.model_dump(mode="json"),
            ctx,
            workflow_version=self.workflow_version,
        )
        return ArtifactOutput(output)


class ArtifactMajorNode(Node[ArtifactParams, ArtifactOutput]):
    """A lane's node: every served version of one artifact node major."""

    Input = ArtifactParams
    Output = ArtifactOutput
    workload = Workload.CPU

    def __init__(self, name: str, major: int, service: ArtifactService) -> None:
        self.name = name
        self.versions: dict[str, NodeCatalogEntry] = {}
        self.service = service
        self.version = f"{major}.0.0"
        self._major = major

    def update(self, versions: dict[str, NodeCatalogEntry]) -> None:
        self.versions = dict(versions)
        if versions:
            self.version = max(versions, key=Version.parse)

    @property
    def major(self) -> int:
        return self._major

    def for_invocation(self, invocation: NodeInvocation) -> AnyNode:
        version = invocation.step.node_version
        return ArtifactVersionNode(
            self.name,
            version,
            self.versions.get(version),
            self.service,
            workflow_version=invocation.workflow_version,
            lookup=self.entry_of,
        )

    def entry_of(self, version: str) -> NodeCatalogEntry | None:
        """The served entry of ``version`` now (``update`` replaces the map)."""
        return self.versions.get(version)

    def set_concurrency(self, limit: int) -> None:
        self.service.set_parallel_runs(limit)

    async def execute(self, params: ArtifactParams, ctx: NodeContext) -> ArtifactOutput:
        raise RefluxError(  # the runtime runs the node for_invocation returns
            f"Expected an invocation of a version of {self.name}, not of the lane itself",
            error_class="State",
        )


class CatalogFollower:
    """Tails the compacted ``nodes`` topic from the start with a consumer of its own (no
    group commits): ``entries`` is the catalog as far as it was read."""

    def __init__(self, settings: Settings, catalog: TopicCatalog) -> None:
        self.topic = catalog.nodes.topic
        self.entries: dict[str, NodeCatalogEntry] = {}
        self._consumer = Consumer(
            {
                **kafka_client_config(settings),
                "group.id": f"{settings.topic_prefix}.artifact-catalog-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._assigned = False

    def _assign(self) -> bool:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=5)
        except KafkaException as exc:
            log.warning("artifact worker: cannot list %s: %s", self.topic, exc)
            return False
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        self._consumer.assign(
            [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(topic.partitions)]
        )
        self._assigned = True
        return True

    def poll(self, timeout: float) -> bool:
        """Read what arrived within ``timeout`` s; True when an entry changed."""
        if not self._assigned and not self._assign():
            time.sleep(timeout)
            return False
        changed = False
        for message in self._consumer.consume(num_messages=500, timeout=timeout):
            if message.error() is not None or message.value() is None:
                continue
            try:
                record = decode(message.value() or b"", NodeCatalogEntry)
            except SchemaError:
                continue
            self.entries[f"{record.name}@{record.version}"] = record
            changed = True
        return changed

    def close(self) -> None:
        self._consumer.close()


class ArtifactWorker:
    """Serves the catalog's artifact versions; restarts its lanes when the set of majors
    changes (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        config: WorkerConfig | None = None,
        catalog: TopicCatalog | None = None,
        service: ArtifactService | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or TopicCatalog.from_settings(settings)
        self.config = config or WorkerConfig.from_settings(settings)
        self.secrets = resolver_from_settings(settings)
        self.service = service or ArtifactService.from_settings(settings, secrets=self.secrets)
        self.poll_s = poll_s
        self.majors: dict[tuple[str, int], ArtifactMajorNode] = {}
        self.runtime: WorkerRuntime | None = None
        self.restarts = 0

    def sync(self, entries: dict[str, NodeCatalogEntry]) -> set[tuple[str, int]]:
        """Update the served versions from ``entries``; returns the majors now served."""
        grouped: dict[tuple[str, int], dict[str, NodeCatalogEntry]] = {}
        for entry in served_versions(entries).values():
            major = Version.parse(entry.version).major
            grouped.setdefault((entry.name, major), {})[entry.version] = entry
        for key, versions in grouped.items():
            node = self.majors.get(key)
            if node is None:
                node = self.majors[key] = ArtifactMajorNode(key[0], key[1], self.service)
            node.update(versions)
        for key in set(self.majors) - set(grouped):
            del self.majors[key]
        return set(grouped)

    async def run_forever(self, stop: asyncio.Event) -> None:
        follower = CatalogFollower(self.settings, self.catalog)
        try:
            while not stop.is_set():
                await asyncio.to_thread(follower.poll, self.poll_s)
                serving = self.sync(follower.entries)
                if not serving:
                    continue
                await self._serve(serving, follower, stop)
        finally:
            follower.close()
            self.service.close()

    async def _serve(
        self, serving: set[tuple[str, int]], follower: CatalogFollower, stop: asyncio.Event
    ) -> None:
        nodes = [self.majors[key] for key in sorted(serving)]
        runtime = WorkerRuntime(
            self.settings, nodes, config=self.config, catalog=self.catalog, secrets=self.secrets
        )
        self.runtime = runtime
        log.info(
            "artifact worker serving %s",
            [f"{n.name}@{n.major}: {sorted(n.versions)}" for n in nodes],
        )
        lanes_stop = asyncio.Event()
        task = asyncio.create_task(runtime.run_forever(lanes_stop))
        try:
            while not stop.is_set() and not task.done():
                await asyncio.to_thread(follower.poll, self.poll_s)
                if self.sync(follower.entries) != serving:
                    log.info("artifact worker: the served node majors changed; restarting lanes")
                    self.restarts += 1
                    break
        finally:
            lanes_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
