"""The trigger router: consumes ``triggers`` and publishes ``StartRun`` on ``commands``.

Records arrive in any shape :mod:`processors.triggers.formats` accepts (Avro ``Trigger``, a plain
JSON trigger, a CloudEvent in structured or binary mode; ADR 0053). The router is the I/O edge:
it reads the record raw, has it decoded, checks that the workflow is registered
(:mod:`processors.triggers.registered`, caught up before a miss is believed) and produces the
command.

At-least-once: the command is produced and flushed before the trigger's offset is committed. A
redelivered trigger yields the same run id (see :mod:`processors.triggers.mapping`), which the
scheduler starts only once. A record that cannot start a run (undecodable, a CloudEvent without
a required attribute or a workflow, an unregistered workflow) goes to the dead-letter topic with
the reason. The run belongs to the workflow's tenant: ``StartRun.tenant`` stays unset and the
scheduler takes the registered workflow's (ADR 0051).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from foundation.errors import NonRetryableError
from foundation.liveness import Heartbeat
from foundation.settings import Settings
from processors.triggers.formats import decode_trigger, trigger_trace_context
from processors.triggers.mapping import start_command
from processors.triggers.registered import RegisteredWorkflows
from streams.consumer import LOOP_POLL_S, ConsumedRecord, Consumer
from streams.producer import Producer
from streams.topics import TopicCatalog
from streams.tracing import trace_headers

log = logging.getLogger(__name__)


class UnknownWorkflowError(NonRetryableError):
    error_class = "UnknownWorkflow"


class TriggerRouter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.trigger-router"
        self.type_map = dict(settings.trigger_type_map)
        self.producer = Producer(settings, client_id="reflux-trigger-router")
        self.workflows = RegisteredWorkflows(settings, self.catalog.workflows.topic)
        # Raw: the value may be Avro, JSON or a CloudEvent's data; formats decodes it.
        self.consumer = Consumer(
            [self.catalog.triggers], self.group, settings, catalog=self.catalog, raw=True
        )
        self.routed = 0

    def _route(self, record: ConsumedRecord) -> None:
        received_at = (
            datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
            if record.timestamp_ms is not None
            else datetime.now(UTC)
        )
        shape, trigger = decode_trigger(
            record.raw,
            record.headers,
            key=record.key,
            received_at=received_at,
            type_map=self.type_map,
        )
        if not self.workflows.registered(trigger.workflow_id, trigger.workflow_version):
            which = (
                "any version"
                if trigger.workflow_version is None
                else f"version {trigger.workflow_version}"
            )
            raise UnknownWorkflowError(
                f"Expected workflow {trigger.workflow_id!r} ({which}) to be registered, but it "
                f"is not (trigger {trigger.idempotency_key!r} from {trigger.source!r}, {shape})"
            )
        command = start_command(trigger, trigger_trace_context(record.raw, record.headers))
        self.producer.send(
            self.catalog.commands,
            key=command.run_id,
            value=command,
            headers=trace_headers(command.trace_context),
        )
        self.routed += 1
        log.info(
            "%s trigger %s from %s -> run %s of %s",
            shape,
            trigger.idempotency_key,
            trigger.source,
            command.run_id,
            command.workflow_id,
        )

    def run_once(self, timeout: float = LOOP_POLL_S) -> int:
        result = self.consumer.process(self._route, timeout=timeout, flush=[self.producer])
        return result.processed

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        while not stop.is_set():
            heartbeat.beat()
            self.run_once()

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.workflows.close()
            self.producer.close()
