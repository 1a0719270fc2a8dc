"""Each component's Prometheus ``/metrics`` under a small load (issue 14, ADR 0060).

The scheduler, a worker and the projector run as real processes (``reflux scheduler|worker|
projector --metrics-port N``) on this test's own topics. Two waves of runs go through; each
component's ``/metrics`` is scraped after each wave and parsed with Prometheus' own text parser.
The counters must have moved between the scrapes, and every component must show a consumer-lag
series for every partition it consumes, which is 0 once the load is done. The projector starts
only after the first wave went through the scheduler and the worker, one record per transaction
and lag reports every 100 ms: its lag must be seen above 0 while it catches up.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation.settings import Settings
from schemas.models import StartRun, WorkflowRegistered
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.engine_fixtures import drop_schemas, transform
from tests.integration.kafka_fixtures import register_schema
from tests.support.processes import Component, component_env, wait_for
from workflows import parse_workflow

WAVE = 20
WORKFLOW = "metrics"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample of a component's /metrics, parsed by the Prometheus text parser."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def lag(samples: Samples, topic: str) -> dict[str, float]:
    """partition -> lag of ``topic``'s series."""
    found = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "reflux_consumer_lag" and label["topic"] == topic:
            found[label["partition"]] = value
    return found


def _workflow() -> dict[str, Any]:
    # The worker registers transform@1.0.0, so the scheduler would evaluate these steps itself
    # (ADR 0064) and the worker would see no attempt: this test is about the remote path.
    return {
        "id": WORKFLOW,
        "inputs": {"index": {"type": "integer", "required": True}},
        "steps": [
            transform("a", "value", {"value": "{{ inputs.index }}"}, inline=False),
            transform("b", "value", {"value": "{{ steps.a.output }}"}, needs=["a"], inline=False),
        ],
    }


@pytest.mark.timeout(240)
def test_each_component_serves_metrics_that_move_under_load(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    catalog = TopicCatalog.from_settings(settings)
    partitions = [str(p) for p in range(settings.default_partitions)]
    schema = f"metrics_{uuid.uuid4().hex[:10]}"
    register_schema(schema, "test_component_metrics")
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = {"scheduler": _free_port(), "worker": _free_port(), "projector": _free_port()}
    bootstrap = ["--bootstrap", settings.kafka_bootstrap, "--prefix", settings.topic_prefix]
    components = [
        Component(
            "scheduler",
            ["scheduler", "--instance-id", "metrics", "--metrics-port", str(ports["scheduler"])],
            settings,
            logs,
        ),
        Component(
            "worker",
            ["worker", "--nodes", "transform", "--metrics-port", str(ports["worker"])],
            settings,
            logs,
        ),
        Component(
            "projector",
            # One record per transaction, lag reported every 100 ms: started behind a backlog,
            # it shows a lag above 0 while it catches up, for a second or more.
            ["projector", "--schema", schema, "--batch-size", "1", *bootstrap],
            settings,
            logs,
            # The setting instead of the flag: both ways must work.
            env={
                "REFLUX_METRICS_PORT": str(ports["projector"]),
                "REFLUX_METRICS_LAG_INTERVAL_MS": "100",
            },
        ),
    ]
    scheduler, worker, projector = components
    invoke_args = ["--invoke", "transform:1"]
    producer = Producer(settings, client_id="metrics-test")
    try:
        subprocess.run(
            [sys.executable, "-m", "reflux.cli", "topics", "create", *bootstrap, *invoke_args],
            check=True,
            capture_output=True,
            env=component_env(settings),
        )
        producer.send(
            catalog.workflows,
            f"{WORKFLOW}@1",
            WorkflowRegistered(
                workflow_id=WORKFLOW,
                version=1,
                definition=parse_workflow(_workflow()).to_json_dict(),
                registered_at=datetime.now(UTC),
            ),
        )
        producer.flush(10)
        scheduler.start()
        worker.start()

        def wave(first: int) -> None:
            for index in range(first, first + WAVE):
                run_id = str(uuid.uuid4())
                producer.send(
                    catalog.commands,
                    run_id,
                    StartRun(run_id=run_id, workflow_id=WORKFLOW, inputs={"index": index}),
                )
            producer.flush(10)

        def done(runs: int, names: tuple[str, ...] = tuple(ports)) -> dict[str, Samples] | None:
            """The samples of ``names`` once all ``runs`` are through them, else None."""
            try:
                scraped = {name: scrape(ports[name]) for name in names}
            except httpx.HTTPError:
                return None  # not listening yet
            for name, samples in scraped.items():
                seen = [v for (n, _), v in samples.items() if n == "reflux_consumer_lag"]
                peak_lag[name] = max([peak_lag.get(name, 0.0), *seen])
            # Two steps per run: 2 attempts, >= 3 scheduler inputs (a start, two results) and
            # >= 4 run events (started, two steps done, run done) for the projector.
            wanted = {
                "worker": ("reflux_worker_attempts_total", 2),
                "scheduler": ("reflux_scheduler_records_consumed_total", 3),
                "projector": ("reflux_projector_applied_total", 4),
            }
            for name in names:
                metric, per_run = wanted[name]
                if total(scraped[name], metric) < per_run * runs:
                    return None
            return scraped

        peak_lag: dict[str, float] = {}
        first: dict[str, Samples] = {}
        second: dict[str, Samples] = {}

        def through(runs: int, into: dict[str, Samples], *names: str) -> bool:
            got = done(runs, names or tuple(ports))
            if got is not None:
                into.update(got)
            return got is not None

        wave(0)
        wait_for(
            lambda: through(WAVE, first, "scheduler", "worker"),
            120,
            "the first wave through the scheduler and the worker",
            scheduler,
            worker,
        )
        # The projector starts behind the first wave's run events: its lag must show them.
        projector.start()
        wait_for(
            lambda: through(WAVE, first, "projector"),
            120,
            "the first wave through the projector",
            *components,
        )
        assert peak_lag["projector"] > 0, peak_lag
        wave(WAVE)
        wait_for(lambda: through(2 * WAVE, second), 120, "the second wave through", *components)

        moved = {
            ("scheduler", "reflux_scheduler_records_consumed_total"),
            ("scheduler", "reflux_scheduler_events_produced_total"),
            ("scheduler", "reflux_scheduler_invocations_produced_total"),
            ("scheduler", "reflux_scheduler_transaction_duration_seconds_count"),
            ("scheduler", "reflux_scheduler_batch_records_sum"),
            ("worker", "reflux_worker_attempts_total"),
            ("worker", "reflux_worker_attempt_duration_seconds_count"),
            ("projector", "reflux_projector_records_total"),
            ("projector", "reflux_projector_applied_total"),
            ("projector", "reflux_projector_batch_duration_seconds_count"),
        }
        for owner, name in sorted(moved):
            before, after = total(first[owner], name), total(second[owner], name)
            assert 0 < before < after, (owner, name, before, after)
        # By topic: commands and results both counted.
        for topic in (catalog.commands.topic, catalog.results.topic):
            assert (
                total(second["scheduler"], "reflux_scheduler_records_consumed_total", topic=topic)
                > 0
            ), topic
        assert total(second["worker"], "reflux_worker_attempts_in_flight", node="transform") == 0

        # Lag: a series per consumed partition (librdkafka reports every 5 s), 0 once idle.
        invoke = catalog.invoke_topic("transform", 1).topic
        consumed = {
            "scheduler": [catalog.commands.topic, catalog.results.topic],
            "worker": [invoke],
            "projector": [catalog.runs.topic],
        }

        def lag_settled() -> bool:
            for owner, topics in consumed.items():
                samples = scrape(ports[owner])
                for topic in topics:
                    series = lag(samples, topic)
                    if sorted(series) != partitions or any(series.values()):
                        return False
            return True

        wait_for(lag_settled, 60, "a zero lag series per consumed partition", *components)
        print(f"\nmetrics: peak consumer lag seen while scraping: {peak_lag}")
    finally:
        producer.close()
        for component in components:
            component.stop()
        drop_schemas(settings, schema)
