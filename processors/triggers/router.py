"""The trigger router: consumes ``triggers`` and publishes ``StartRun`` on ``commands``.

At-least-once: the command is produced and flushed before the trigger's offset is committed. A
redelivered trigger yields the same run id (see :mod:`processors.triggers.mapping`), which the
scheduler starts only once. Undecodable triggers go to the dead-letter topic.
"""

from __future__ import annotations

import logging
import threading

from foundation.liveness import Heartbeat
from foundation.settings import Settings
from processors.triggers.mapping import start_command
from schemas.models import Trigger
from streams.consumer import ConsumedRecord, Consumer
from streams.producer import Producer
from streams.topics import TopicCatalog

log = logging.getLogger(__name__)


class TriggerRouter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = TopicCatalog.from_settings(settings)
        self.group = f"{settings.topic_prefix}.trigger-router"
        self.producer = Producer(settings, client_id="reflux-trigger-router")
        self.consumer = Consumer(
            [self.catalog.triggers],
            self.group,
            settings,
            catalog=self.catalog,
            expected=Trigger,
        )
        self.routed = 0

    def _route(self, record: ConsumedRecord) -> None:
        assert isinstance(record.value, Trigger)
        command = start_command(record.value)
        self.producer.send(self.catalog.commands, key=command.run_id, value=command)
        self.routed += 1
        log.info(
            "trigger %s from %s -> run %s of %s",
            record.value.idempotency_key,
            record.value.source,
            command.run_id,
            command.workflow_id,
        )

    def run_once(self, timeout: float = 0.5) -> int:
        result = self.consumer.process(self._route, timeout=timeout, flush=[self.producer])
        return result.processed

    def run(self, stop: threading.Event) -> None:
        heartbeat = Heartbeat.from_settings(self.settings)
        while not stop.is_set():
            heartbeat.beat()
            self.run_once()

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
