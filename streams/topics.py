"""The topic catalog: the one place that names every Kafka topic, its partitions and configs.

Nothing else in the code base spells a topic name. Components ask a :class:`TopicCatalog` (built
from :class:`~foundation.settings.Settings`) for a :class:`TopicSpec` and use ``spec.topic``. Tests
build a catalog with their own ``topic_prefix`` so runs never collide.

``commands``, ``runs``, ``results`` and ``scheduler-state`` form the co-partitioned group ``"run"``:
the same key (run id) and the same partition count, so one scheduler task sees every input of a
run in order and finds the run's snapshot in the same partition number. The
catalog refuses to exist if that invariant is broken, because a skew would silently split a run
across scheduler tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from foundation.errors import ConfigurationError
from foundation.settings import Settings, get_settings

__all__ = [
    "RUN_GROUP",
    "SCHEDULE_GROUP",
    "TopicCatalog",
    "TopicCatalogError",
    "TopicSpec",
    "invoke_topic",
    "min_insync_replicas",
    "validate_topic_name",
]

DAY_MS: Final = 24 * 60 * 60 * 1000
RUN_GROUP: Final = "run"
SCHEDULE_GROUP: Final = "schedule"

# Kafka's own rule (kafka.common.internals.Topic): legal characters and at most 249 of them.
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
# Node names are dotted identifiers ("http.request"), which are legal topic characters.
_NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")


class TopicCatalogError(ConfigurationError):
    """The catalog itself is inconsistent (bad name, broken co-partitioning, unknown topic)."""

    error_class = "TopicCatalog"


def min_insync_replicas(replication: int, configured: int | None = None) -> int | None:
    """``min.insync.replicas`` for a topic of ``replication`` replicas (``None``: leave the
    broker's default).

    With producers at ``acks=all`` (enforced by :func:`streams.producer.producer_config`) a write
    is acknowledged once this many replicas have it: ``min(2, replication)`` for a replicated
    topic, so one broker's loss never loses an acknowledged write. ``configured``
    (``Settings.min_insync_replicas``) overrides it, within 1..replication.
    """
    if configured is not None:
        if isinstance(configured, bool) or not 1 <= configured <= replication:
            raise TopicCatalogError(
                "Expected min_insync_replicas (REFLUX_MIN_INSYNC_REPLICAS) between 1 and the "
                f"replication factor {replication}, but got {configured!r}"
            )
        return configured
    return min(2, replication) if replication > 1 else None


def validate_topic_name(name: str) -> str:
    if name in {".", ".."} or not _TOPIC_NAME.fullmatch(name):
        raise TopicCatalogError(
            f"Expected a Kafka topic name of 1-249 characters from [a-zA-Z0-9._-], but got {name!r}"
        )
    return name


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic must look like on the broker, and what it is for."""

    logical: str
    """Name without the prefix, e.g. ``"runs"`` or ``"invoke.http.request.v1"``."""
    topic: str
    """Full topic name on the broker, e.g. ``"reflux.runs"``."""
    partitions: int
    replication: int
    key: str
    """What the record key is (e.g. ``"run_id"``); co-partitioned topics must agree on it."""
    description: str
    configs: Mapping[str, str] = field(default_factory=dict, hash=False)
    copartition_group: str | None = None

    def __post_init__(self) -> None:
        validate_topic_name(self.topic)
        if self.partitions < 1:
            raise TopicCatalogError(
                f"Expected at least 1 partition for topic {self.topic!r}, but got {self.partitions}"
            )
        if self.replication < 1:
            raise TopicCatalogError(
                f"Expected a replication factor of at least 1 for topic {self.topic!r}, "
                f"but got {self.replication}"
            )
        # Freeze the configs so a spec cannot be changed behind the catalog's back.
        object.__setattr__(self, "configs", MappingProxyType(dict(self.configs)))

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy.split(",")


def _retention(ms: int) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(ms)}


_COMPACT: Final = {"cleanup.policy": "compact"}
# Scheduler snapshots are rewritten all the time (every snapshot cycle of a run that changed),
# so segments roll often and the cleaner runs early: recovery reads what compaction left, and
# an uncompacted tail of superseded snapshots only costs reading time. 1 h / 64 MiB segments.
_SNAPSHOTS: Final = {
    "cleanup.policy": "compact",
    "segment.ms": str(60 * 60 * 1000),
    "segment.bytes": str(64 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.2",
}

# logical name -> (key, configs, co-partition group, description); the DESIGN.md section 3 table.
# Retention is a starting point: the run log is the source of truth, so it is kept forever (-1)
# and only ever deleted on purpose; transient inputs keep a week for debugging and re-drives.
_FIXED: Final[dict[str, tuple[str, dict[str, str], str | None, str]]] = {
    # Keyed by "id@version", not id: compaction would otherwise drop the older versions.
    "workflows": ("workflow_id@version", _COMPACT, None, "registered workflow versions"),
    "nodes": ("node@version", _COMPACT, None, "node catalog: registrations, rollout weights"),
    "commands": ("run_id", _retention(7 * DAY_MS), RUN_GROUP, "commands to the step scheduler"),
    "runs": ("run_id", _retention(-1), RUN_GROUP, "the run event log, the source of truth"),
    "results": ("run_id", _retention(7 * DAY_MS), RUN_GROUP, "node results from worker groups"),
    # The scheduler's run states, written in its transactions (snapshot + tail recovery, ADR
    # 0015): one record per run (its full state, or a small marker once it finished) plus one
    # checkpoint record per partition. Co-partitioned: partition p snapshots runs partition p.
    "scheduler-state": (
        "run_id",
        _SNAPSHOTS,
        RUN_GROUP,
        "scheduler run-state snapshots (compacted) for bounded recovery",
    ),
    "traces": ("node", _retention(7 * DAY_MS), None, "one trace per node attempt"),
    # Kept forever like the run log: it is the source of truth of proposals, improvement
    # policies and the routes between workflow versions (ADR 0023); a route lost to retention
    # would send new runs back to a version rolled away from.
    "mutations": ("workflow_id", _retention(-1), None, "workflow mutation proposals, policies"),
    # A/B replay requests and completions (ADR 0030): a request waits here until a runner takes
    # it; a completion tells the mutation processor a proposal's replay verdict. Reports live in
    # Postgres, so a week is plenty.
    "replays": ("replay_id", _retention(7 * DAY_MS), None, "A/B replay requests, completions"),
    "triggers": ("source_key", _retention(7 * DAY_MS), None, "external events that start runs"),
    "dlq": ("original_key", _retention(30 * DAY_MS), None, "poison records with error and origin"),
    # Keyed by rule id, and one rule has many subjects (nodes, workflows): compaction would keep
    # only the last subject's record of each rule, so this is a retained history of transitions.
    # The critic's findings (ADR 0031), keyed by subject so one step's diagnoses stay in order.
    # The historian keeps them (with their embeddings) in Postgres; a month covers a re-read.
    "diagnoses": ("subject", _retention(30 * DAY_MS), None, "critic findings with evidence"),
    "alerts": ("rule_id", _retention(30 * DAY_MS), None, "SLO alert transitions (firing/resolved)"),
    # Every write to the API, refused ones included (ADR 0046), keyed by tenant. Kept a year:
    # the Postgres projection serves queries, the topic is the record an auditor replays.
    "audit": ("tenant", _retention(400 * DAY_MS), None, "API writes: who, tenant, what, outcome"),
    # The public outcomes (ADR 0054): CloudEvents JSON for systems that do not import REFLUX,
    # written in the scheduler's transactions with the run events. Derived from the run log, so
    # a week like the other transient topics; a consumer away longer reads the API.
    "run-outcomes": ("run_id", _retention(7 * DAY_MS), None, "run outcomes as CloudEvents JSON"),
    # Schedules (ADR 0056): the latest record per schedule is the schedule (a tombstone deletes
    # it), and the schedule processor's progress (last slot fired) is written in the transaction
    # that starts the slot's run. Co-partitioned: the owner of schedules partition p reads its
    # schedules' progress from schedule-state partition p.
    "schedules": ("schedule_id", _COMPACT, SCHEDULE_GROUP, "cron schedules that start runs"),
    "schedule-state": (
        "schedule_id",
        _COMPACT,
        SCHEDULE_GROUP,
        "schedule progress (last slot fired), written with the runs it starts",
    ),
}
_INVOKE_CONFIGS: Final = _retention(7 * DAY_MS)


class TopicCatalog:
    """Every topic of one REFLUX deployment (one ``topic_prefix``).

    Iterating yields the fixed topics; invoke topics are per node major version and come from
    :meth:`invoke_topic`.
    """

    def __init__(
        self,
        prefix: str,
        specs: Mapping[str, TopicSpec],
        *,
        default_partitions: int,
        replication: int,
    ) -> None:
        validate_topic_name(prefix)
        self.prefix = prefix
        self.default_partitions = default_partitions
        self.replication = replication
        self._specs: dict[str, TopicSpec] = dict(specs)
        missing = sorted(set(_FIXED) - set(self._specs))
        if missing:
            raise TopicCatalogError(
                f"Expected the catalog to define {missing}, but they are missing"
            )
        for logical, spec in self._specs.items():
            if spec.logical != logical:
                raise TopicCatalogError(
                    f"Expected spec registered as {logical!r} to be named so, "
                    f"but it is {spec.logical!r}"
                )
            if spec.topic != f"{prefix}.{logical}":
                raise TopicCatalogError(
                    f"Expected topic {prefix}.{logical!r} for {logical!r}, but got {spec.topic!r}"
                )
        self._check_copartitioning()

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        partitions: Mapping[str, int] | None = None,
    ) -> TopicCatalog:
        """Build the catalog of DESIGN.md section 3; ``partitions`` overrides per logical name."""
        settings = settings or get_settings()
        overrides = dict(partitions or {})
        unknown = sorted(set(overrides) - set(_FIXED))
        if unknown:
            raise TopicCatalogError(
                f"Expected partition overrides for known topics, but got {unknown}"
            )
        specs = {
            logical: TopicSpec(
                logical=logical,
                topic=f"{settings.topic_prefix}.{logical}",
                partitions=overrides.get(logical, settings.default_partitions),
                replication=settings.replication_factor,
                key=key,
                description=description,
                configs=configs,
                copartition_group=group,
            )
            for logical, (key, configs, group, description) in _FIXED.items()
        }
        return cls(
            settings.topic_prefix,
            specs,
            default_partitions=settings.default_partitions,
            replication=settings.replication_factor,
        )

    def _check_copartitioning(self) -> None:
        groups: dict[str, list[TopicSpec]] = {}
        for spec in self._specs.values():
            if spec.copartition_group is not None:
                groups.setdefault(spec.copartition_group, []).append(spec)
        for group, members in groups.items():
            shapes = {(m.partitions, m.key) for m in members}
            if len(shapes) > 1:
                detail = ", ".join(
                    f"{m.topic}={m.partitions} partitions keyed by {m.key}" for m in members
                )
                raise TopicCatalogError(
                    f"Expected co-partitioned group {group!r} to share one partition count "
                    f"and key, but got {detail}"
                )

    # The fixed topics, spelled out so call sites are checked by mypy.
    @property
    def workflows(self) -> TopicSpec:
        return self._specs["workflows"]

    @property
    def nodes(self) -> TopicSpec:
        return self._specs["nodes"]

    @property
    def commands(self) -> TopicSpec:
        return self._specs["commands"]

    @property
    def runs(self) -> TopicSpec:
        return self._specs["runs"]

    @property
    def results(self) -> TopicSpec:
        return self._specs["results"]

    @property
    def scheduler_state(self) -> TopicSpec:
        return self._specs["scheduler-state"]

    @property
    def traces(self) -> TopicSpec:
        return self._specs["traces"]

    @property
    def mutations(self) -> TopicSpec:
        return self._specs["mutations"]

    @property
    def replays(self) -> TopicSpec:
        return self._specs["replays"]

    @property
    def triggers(self) -> TopicSpec:
        return self._specs["triggers"]

    @property
    def dlq(self) -> TopicSpec:
        return self._specs["dlq"]

    @property
    def diagnoses(self) -> TopicSpec:
        return self._specs["diagnoses"]

    @property
    def alerts(self) -> TopicSpec:
        return self._specs["alerts"]

    @property
    def audit(self) -> TopicSpec:
        return self._specs["audit"]

    @property
    def run_outcomes(self) -> TopicSpec:
        return self._specs["run-outcomes"]

    @property
    def schedules(self) -> TopicSpec:
        return self._specs["schedules"]

    @property
    def schedule_state(self) -> TopicSpec:
        return self._specs["schedule-state"]

    def __getitem__(self, logical: str) -> TopicSpec:
        try:
            return self._specs[logical]
        except KeyError:
            raise TopicCatalogError(
                f"Expected a topic of the catalog ({sorted(self._specs)}), but got {logical!r}"
            ) from None

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def copartitioned(self, group: str = RUN_GROUP) -> tuple[TopicSpec, ...]:
        return tuple(s for s in self._specs.values() if s.copartition_group == group)

    def by_topic(self, topic: str) -> TopicSpec:
        """The spec of a full topic name, invoke topics included."""
        for spec in self._specs.values():
            if spec.topic == topic:
                return spec
        match = re.fullmatch(rf"{re.escape(self.prefix)}\.invoke\.(.+)\.v(\d+)", topic)
        if match:
            return self.invoke_topic(match.group(1), int(match.group(2)))
        raise TopicCatalogError(f"Expected a topic of catalog {self.prefix!r}, but got {topic!r}")

    def invoke_topic(self, node: str, major: int) -> TopicSpec:
        """The invocation topic of one node major version: ``{prefix}.invoke.{node}.v{major}``."""
        if not _NODE_NAME.fullmatch(node):
            raise TopicCatalogError(
                "Expected a node name of dotted lowercase segments (e.g. 'http.request'), "
                f"but got {node!r}"
            )
        if isinstance(major, bool) or not isinstance(major, int) or major < 0:
            raise TopicCatalogError(f"Expected a non-negative major version, but got {major!r}")
        logical = f"invoke.{node}.v{major}"
        return TopicSpec(
            logical=logical,
            topic=f"{self.prefix}.{logical}",
            partitions=self.default_partitions,
            replication=self.replication,
            key="run_id",
            description=f"invocations of node {node} v{major}.x",
            configs=_INVOKE_CONFIGS,
        )

    def worker_group(self, node: str, major: int) -> str:
        """Consumer group of the workers of one node major version."""
        self.invoke_topic(node, major)  # same validation
        return f"{self.prefix}.workers.{node}.v{major}"


def invoke_topic(node: str, major: int, settings: Settings | None = None) -> TopicSpec:
    """Shortcut for ``TopicCatalog.from_settings(settings).invoke_topic(node, major)``."""
    return TopicCatalog.from_settings(settings).invoke_topic(node, major)
