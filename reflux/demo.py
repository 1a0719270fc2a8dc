"""``reflux demo``: the product's main job on the local services, narrated.

Today it proves the event backbone end to end: it creates the topic catalog, publishes Avro
commands and run events through Kafka, consumes and decodes them, and shows a malformed record
landing on the dead-letter topic with its reason while processing goes on.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from reflux.settings import Settings, get_settings
from schemas import RefluxRecord, models
from streams.admin import ensure_topics
from streams.catalog import TopicCatalog
from streams.consumer import ConsumedRecord, Consumer
from streams.producer import Producer


def _events(run_id: str) -> list[RefluxRecord]:
    now = datetime.now(UTC)
    step = models.StepRef(step_id="fetch", node="http.request", node_version="^1")
    definition = {"id": "demo", "steps": [{"id": "fetch", "node": "http.request@^1"}]}
    return [
        models.RunStarted(
            run_id=run_id,
            seq=1,
            workflow_id="demo",
            workflow_version=1,
            inputs={"city": "Lyon"},
            definition=definition,
            source="demo",
        ),
        models.StepScheduled(
            run_id=run_id,
            seq=2,
            step=step,
            attempt=1,
            params={"url": "http://127.0.0.1/weather?city=Lyon"},
        ),
        models.StepDispatched(
            run_id=run_id,
            seq=3,
            step=step,
            attempt=1,
            invocation_id=str(uuid.uuid4()),
            invoke_topic="reflux-demo.invoke.http.request.v1",
            node_version="1.0.0",
            timeout_at=now,
        ),
        models.StepSucceeded(
            run_id=run_id,
            seq=4,
            step=step,
            attempt=1,
            output={"status": 200},
            cache_hit=False,
            duration_ms=42,
        ),
        models.RunSucceeded(run_id=run_id, seq=5, outputs={"status": 200}, duration_ms=57),
    ]


def _describe(record: ConsumedRecord) -> str:
    value = record.value
    seq = getattr(value, "seq", -1)
    kind = type(value).__name__
    extra = ""
    if isinstance(value, models.StartRun):
        extra = f"workflow={value.workflow_id} inputs={value.inputs}"
    elif isinstance(value, models.DeadLetter):
        extra = f"from {value.original_topic}@{value.offset}: [{value.error_class}] {value.reason}"
    elif hasattr(value, "step"):
        extra = f"step={value.step.step_id}"  # type: ignore[union-attr]
    where = f"{record.topic:<28} p{record.partition} @{record.offset:<4}"
    return f"  {where} seq={seq:<3} {kind:<16} {extra}"


def _show(record: ConsumedRecord, seen: list[ConsumedRecord]) -> None:
    seen.append(record)
    print(_describe(record))


def run_demo(settings: Settings | None = None) -> int:
    base = settings or get_settings()
    settings = base.model_copy(update={"topic_prefix": f"{base.topic_prefix}-demo"})
    catalog = TopicCatalog.from_settings(settings)
    print(
        f"1. Creating the topic catalog (prefix '{settings.topic_prefix}') "
        f"on {settings.kafka_bootstrap}"
    )
    report = ensure_topics(catalog, settings=settings)
    print(f"   created {len(report.created)}, already there {len(report.unchanged)}")

    run_id = str(uuid.uuid4())
    print(f"2. Publishing a StartRun command and the events of run {run_id[:8]} (Avro)")
    start = models.StartRun(run_id=run_id, workflow_id="demo", inputs={"city": "Lyon"})
    with Producer(settings, client_id="reflux-demo") as producer:
        producer.send(catalog.commands, key=run_id, value=start)
        for event in _events(run_id):
            producer.send(catalog.runs, key=run_id, value=event)
        print("3. Publishing a malformed record on the runs topic (it must not stop anything)")
        producer.send(catalog.runs, key=run_id, value=b"\x00not avro at all")
        producer.send(catalog.runs, key=run_id, value=models.RunCancelled(run_id=run_id, seq=6))
        producer.flush(30)

    print("4. Consuming and decoding (poison records go to the dead-letter topic):")
    group = f"reflux-demo-{uuid.uuid4().hex[:6]}"
    seen: list[ConsumedRecord] = []
    with Consumer([catalog.commands, catalog.runs], group, settings, catalog=catalog) as consumer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            consumer.process(lambda r: _show(r, seen), timeout=0.5)
            if sum(1 for r in seen if getattr(r.value, "run_id", None) == run_id) >= 7:
                break
    with Consumer([catalog.dlq], f"{group}-dlq", settings, catalog=catalog) as dlq:
        deadline = time.monotonic() + 15
        dead: list[ConsumedRecord] = []

        def mine(record: ConsumedRecord) -> None:
            if isinstance(record.value, models.DeadLetter) and record.value.key == run_id.encode():
                dead.append(record)

        while time.monotonic() < deadline and not dead:
            dlq.process(mine, timeout=0.5)
    print("5. Dead-letter topic:")
    for record in dead:
        print(_describe(record))
    ok = len([r for r in seen if getattr(r.value, "run_id", None) == run_id]) == 7 and bool(dead)
    print("demo", "OK" if ok else "FAILED: not every record came back")
    return 0 if ok else 1
