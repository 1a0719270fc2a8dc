"""The node model: what a node is, what it gets when it runs, and how it reports failure.

A node is a versioned, typed async function. It knows nothing about Kafka: the worker runtime
(:mod:`node_workers.runtime`) decodes an invocation, validates the params into ``Input``
(:func:`validate_params`), calls :meth:`Node.execute` with a :class:`NodeContext`, and turns the
returned ``Output`` or the raised :class:`~node_workers.errors.NodeError` into a result and a
trace. That split keeps nodes unit-testable with nothing but ``asyncio.run``.

``NodeModel`` and the params error format live in :mod:`workflows.node_io` (re-exported here):
the scheduler's inline pure nodes validate params exactly as a worker does.
"""

from __future__ import annotations

import enum
import logging
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.errors import NodeError, NonRetryableNodeError, RetryableNodeError
from node_workers.secrets.destinations import SecretDestinations
from workflows.node_io import NodeModel, format_validation_error
from workflows.params_schema import FIELD_NAME_KEY
from workflows.pure_nodes import pure_node

if TYPE_CHECKING:
    from schemas.models import NodeInvocation

__all__ = [
    "AnyNode",
    "Node",
    "NodeContext",
    "NodeError",
    "NodeModel",
    "NonRetryableNodeError",
    "RetryableNodeError",
    "Workload",
    "format_validation_error",
    "parse_semver",
    "validate_params",
]

# semver.org 2.0.0, without build metadata (a build never changes behaviour a caller sees).
_SEMVER: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
# Same rule as streams.topics: node names become topic and consumer group names.
_NODE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")


def parse_semver(version: str) -> tuple[int, int, int, str]:
    """``"1.2.3-draft"`` -> ``(1, 2, 3, "draft")``; raises ``ValueError`` on anything else."""
    match = _SEMVER.fullmatch(version)
    if match is None:
        raise ValueError(f"Expected a semver version like '1.0.0', but got {version!r}")
    major, minor, patch, pre = match.groups()
    return int(major), int(minor), int(patch), pre or ""


class Workload(enum.Enum):
    """What limits a node's attempts, hence how many one worker process runs at once
    (docs/decisions/0019-worker-concurrency.md)."""

    IO = "io"
    """Waits on something else (a server, a mailbox): hundreds run at once on the event loop;
    ``execute`` never blocks the loop (blocking calls go to a pool sized to the node's
    concurrency)."""
    CPU = "cpu"
    """Computes (here or in a sandbox process): about one attempt per core; work that can take
    long runs off the event loop, so the loop keeps serving every other attempt."""


InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


@dataclass(slots=True)
class NodeContext:
    """What one attempt knows besides its params. Built by the runtime, one per attempt."""

    invocation_id: str
    run_id: str
    step_id: str
    attempt: int
    deadline: datetime | None = None
    """Abandon the attempt after this instant (the runtime enforces it as a timeout too)."""
    idempotency_key: str = ""
    """Key for side effects (HTTP ``Idempotency-Key``, SMTP ``Message-ID``); defaults to the
    invocation id. The scheduler may keep it stable across attempts of a step."""
    workflow_id: str = ""
    tenant: str = DEFAULT_TENANT
    """The run's tenant (``NodeInvocation.tenant``): whose egress allow list applies (ADR 0045)."""
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("node_workers.node")
    )
    params_bytes: int | None = None
    """Size of the attempt's params as canonical JSON (what ``inputs_hash`` hashes), when the
    runtime measured it: lets a CPU node keep small inputs on the event loop."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Numbers the node wants recorded in the trace (e.g. ``http_status``, ``response_bytes``)."""
    cost_tokens: int | None = None
    """LLM tokens spent, for nodes that call a model."""
    trace_context: dict[str, str] = field(default_factory=dict)
    """The invocation's W3C trace context (its scheduler attempt span): what a node that calls
    out sends on when no span of the worker's is current (tracing off; ADR 0062)."""
    secrets: SecretDestinations = field(default_factory=SecretDestinations)
    """The secrets resolved into the params and the hosts each may be sent to: a node that
    sends to a workflow-chosen destination calls ``ctx.secrets.check(host, port, ...)`` before
    each request (docs/secrets.md, ADR 0050)."""

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            self.idempotency_key = self.invocation_id

    def remaining_s(self, now: datetime | None = None) -> float | None:
        """Seconds until the deadline (may be negative), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return (self.deadline - (now or datetime.now(UTC))).total_seconds()

    def record(self, name: str, value: float) -> None:
        """Record a metric; booleans and non-finite numbers are refused (ClickHouse Float64)."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise TypeError(f"Expected a finite number for metric {name!r}, but got {value!r}")
        self.metrics[name] = float(value)


class Node(ABC, Generic[InputT, OutputT]):
    """A node version. Subclasses set the class attributes and implement :meth:`execute`.

    ``execute`` must be safe to run again for the same invocation (delivery is at-least-once):
    side-effecting nodes pass ``ctx.idempotency_key`` downstream.
    """

    name: str
    """Dotted lowercase name, e.g. ``"http.request"``; part of topic and group names."""
    version: str
    """Semver; the major selects the invoke topic (``invoke.<name>.v<major>``)."""
    Input: type[InputT]
    Output: type[OutputT]
    cacheable: bool = False
    """Same params, same output: the scheduler may serve it from the step cache."""
    side_effects: bool = False
    """Changes the outside world: never replayed for real in shadow evaluation."""
    pure: bool = False
    """A deterministic function of its params (no I/O, no clock, no randomness) whose evaluation
    lives in :mod:`workflows.pure_nodes`: the scheduler may run its steps inline, without a worker
    (docs/decisions/0064-inline-pure-steps.md). Written in the catalog manifest."""
    workload: Workload = Workload.IO
    """Which concurrency limit of the worker its attempts count against. ``IO`` by default:
    ``execute`` is a coroutine, and a coroutine must not block the loop anyway."""
    own_pool: bool = False
    """Attempts may last minutes or hours (a wait, a sandboxed program): the node's lanes get a
    pool of their own, of their class's size, so they never hold the slots of short attempts."""
    description: str = ""

    @property
    def major(self) -> int:
        return parse_semver(self.version)[0]

    @property
    def key(self) -> str:
        """``name@version``, the node catalog's key."""
        return f"{self.name}@{self.version}"

    def check(self) -> None:
        """Raise ``ValueError`` if the class attributes cannot name topics or versions."""
        if not _NODE_NAME.fullmatch(getattr(self, "name", "")):
            raise ValueError(
                "Expected a node name of dotted lowercase segments (e.g. 'http.request'), "
                f"but {type(self).__name__} has {getattr(self, 'name', None)!r}"
            )
        parse_semver(getattr(self, "version", ""))
        for attr in ("Input", "Output"):
            model = getattr(self, attr, None)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ValueError(
                    f"Expected {type(self).__name__}.{attr} to be a pydantic model, "
                    f"but it is {model!r}"
                )
        if self.pure and pure_node(self.name, self.version) is None:
            # The scheduler inlines only what workflows.pure_nodes implements: a flag without
            # that implementation would promise something nothing does.
            raise ValueError(
                f"Expected {self.key}, which declares pure = True, to be implemented in "
                "workflows.pure_nodes, but it is not"
            )

    def cacheable_for(self, params: InputT) -> bool:
        """Whether this invocation's output may be cached; nodes may narrow it per params."""
        return self.cacheable

    def manifest(self) -> dict[str, Any]:
        """The catalog manifest: flags and JSON schemas of the params and the output."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "cacheable": self.cacheable,
            "side_effects": self.side_effects,
            "pure": self.pure,
            "input_schema": input_schema(self.Input),
            "output_schema": self.Output.model_json_schema(by_alias=True),
        }

    @abstractmethod
    async def execute(self, params: InputT, ctx: NodeContext) -> OutputT:
        """Run one attempt; raise a :class:`NodeError` subclass to fail it."""

    def for_invocation(self, invocation: NodeInvocation) -> Node[Any, Any]:
        """The node version that runs ``invocation``: this one. A lane serves one node major;
        the artifact worker's lanes serve every registered version of theirs and answer with
        the version the invocation names (node_workers/artifacts/worker.py)."""
        return self

    def bind(self, settings: Settings) -> None:  # optional hook, deliberately not abstract
        """Receive the serving runtime's settings before the first attempt (nodes that talk to
        the platform's own services, e.g. Redis, use them instead of the environment's)."""

    def set_concurrency(self, limit: int) -> None:  # optional hook, deliberately not abstract
        """Receive, before the first attempt, the most attempts of this node the serving runtime
        runs at once: size client pools and thread pools to it, so that no started attempt
        waits for a connection or a thread (its timeout already runs)."""

    async def aclose(self) -> None:  # optional hook, deliberately not abstract
        """Release clients (connection pools) at worker shutdown."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"


AnyNode = Node[Any, Any]


def validate_params(node: Node[InputT, Any], raw: Any) -> InputT:
    """The node's ``Input`` from raw JSON params; invalid params fail the step for good."""
    try:
        return node.Input.model_validate(raw)
    except ValidationError as exc:
        raise NonRetryableNodeError(
            format_validation_error(exc), error_class="ValidationError"
        ) from exc


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The params' JSON Schema as documented (aliases), each aliased property marked with the
    Python field name the model also accepts (``populate_by_name``), so a check against the
    schema reads ``json_body`` as ``json`` (workflows/params_schema.py)."""
    schema = model.model_json_schema(by_alias=True)
    config = model.model_config
    if not (config.get("populate_by_name") or config.get("validate_by_name")):
        return schema
    properties = schema.get("properties") or {}
    for name, info in model.model_fields.items():
        alias = info.alias
        if alias and alias != name and isinstance(properties.get(alias), dict):
            properties[alias][FIELD_NAME_KEY] = name
    return schema
