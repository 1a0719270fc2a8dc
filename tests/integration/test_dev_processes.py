"""``reflux dev --processes 2``: two scheduler and two worker processes (each supervised, with
their own pids and instance ids) beside the API; both schedulers own run partitions, a run
started through the API completes, and SIGTERM to ``reflux dev`` leaves no process behind
(docs/decisions/0066-several-scheduler-processes.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from foundation.settings import Settings
from reflux.processes import children_of, component_env
from streams.security import kafka_client_config
from tests.integration.engine_fixtures import drop_schemas
from tests.integration.kafka_fixtures import register_schema
from tests.support.processes import ROOT
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WORKFLOW = {
    "id": "dev-processes",
    "steps": [
        # Evaluated by a scheduler (inline), then by a worker process (inline: false).
        {"id": "a", "node": "transform@^1", "params": {"expression": "x", "data": {"x": 1}}},
        {
            "id": "b",
            "node": "transform@^1",
            "inline": False,
            "needs": ["a"],
            "params": {"expression": "y", "data": {"y": 2}},
        },
    ],
}


@dataclass
class Dev:
    proc: subprocess.Popen[bytes]
    url: str
    key_file: Path
    output: Path
    seen: set[int] = field(default_factory=set)
    """Every process seen under ``reflux dev``: killed at teardown if still alive."""

    def tail(self, chars: int = 4000) -> str:
        return self.output.read_text(errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """Running (a zombie has ended; only its exit status is left for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return []


@pytest.fixture
def dev(kafka_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Dev]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    for name in (schema, f"{schema}_api"):
        register_schema(name, request.node.nodeid)
    port = _free_port()
    env = {
        **component_env(kafka_settings),
        "REFLUX_API_READ_SCHEMA": schema,
        "REFLUX_API_API_SCHEMA": f"{schema}_api",
        "REFLUX_API_KEY_FILE": str(tmp_path / "api-key"),
    }
    output = tmp_path / "dev.log"
    with output.open("wb") as out:
        command = ["dev", "--processes", "2", "--port", str(port), "--log-dir", str(tmp_path)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "reflux.cli", *command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    found = Dev(proc, f"http://127.0.0.1:{port}", tmp_path / "api-key", output)
    try:
        yield found
    finally:
        # Whatever the test left running is killed (a failed test must not leave orphans).
        if proc.poll() is None:
            found.seen.update(s for s in children_of(proc.pid))
            found.seen.update(c for s in children_of(proc.pid) for c in children_of(s))
            proc.kill()
            proc.wait(10)
        for pid in found.seen:
            ours = {"reflux.cli", "reflux.supervision"} & set(_cmdline(pid))  # not a reused pid
            if _alive(pid) and ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        drop_schemas(kafka_settings, schema, f"{schema}_api")


def test_reflux_dev_processes_runs_schedulers_and_workers_apart_and_leaves_no_child(
    dev: Dev, kafka_settings: Settings
) -> None:
    def components() -> dict[int, list[str]]:
        """The supervised components: pid -> their `reflux` arguments."""
        found = {}
        for supervisor in children_of(dev.proc.pid):
            dev.seen.add(supervisor)
            for pid in children_of(supervisor):
                dev.seen.add(pid)
                args = _cmdline(pid)
                if "reflux.cli" in args:
                    found[pid] = args[args.index("reflux.cli") + 1 :]
        return found

    def six_components() -> bool:
        assert dev.proc.poll() is None, dev.tail()
        return len(components()) == 6  # 2 schedulers, 2 workers, projector, trigger router

    eventually(six_components, 60, "reflux dev's component processes", describe=dev.tail)
    running = components()
    schedulers = {pid: a for pid, a in running.items() if a[0] == "scheduler"}
    workers = {pid: a for pid, a in running.items() if a[0] == "worker"}
    assert len(schedulers) == 2 and len(workers) == 2, running
    assert sorted(a[a.index("--instance-id") + 1] for a in schedulers.values()) == [
        "dev-0",
        "dev-1",
    ]
    assert len({dev.proc.pid, *running}) == 7  # every component in a process of its own

    # Both schedulers own run partitions: one group, two members, each with partitions.
    admin = AdminClient(kafka_client_config(kafka_settings))
    group = f"{kafka_settings.topic_prefix}.scheduler"

    def owners() -> dict[str, int]:
        described = admin.describe_consumer_groups([group])[group].result(10)
        if described.state != ConsumerGroupState.STABLE:
            return {}
        return {
            m.client_id: len(m.assignment.topic_partitions if m.assignment else [])
            for m in described.members
        }

    owned = eventually(
        owners,
        60,
        "both schedulers owning partitions",
        until=lambda o: (
            set(o) == {"reflux-scheduler-dev-0", "reflux-scheduler-dev-1"} and all(o.values())
        ),
        describe=dev.tail,
    )
    assert sum(owned.values()) == 2 * kafka_settings.default_partitions, owned  # commands+results

    # A run through the API (the key reflux dev wrote), one step on a worker process.
    def ready() -> bool:
        assert dev.proc.poll() is None, dev.tail()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{dev.url}/readyz", timeout=5).status_code == 200
        return False

    eventually(ready, 60, "the API of reflux dev", describe=dev.tail)
    headers = {"Authorization": f"Bearer {dev.key_file.read_text().strip()}"}
    with httpx.Client(base_url=dev.url, headers=headers, timeout=30) as api:
        assert api.post("/v1/workflows", json=WORKFLOW).status_code == 201
        # A run starts once the read model has the workflow (the projector process writes it).
        eventually(
            lambda: api.get(f"/v1/workflows/{WORKFLOW['id']}").status_code,
            60,
            "the workflow in the API's read model",
            until=lambda code: code == 200,
        )
        started = api.post("/v1/runs", json={"workflow_id": WORKFLOW["id"]})
        assert started.status_code in {200, 202}, started.text
        run_id = started.json()["run_id"]
        run = eventually(
            lambda: api.get(f"/v1/runs/{run_id}").json(),
            60,
            f"run {run_id} to finish",
            until=lambda r: r.get("status") in {"succeeded", "failed", "cancelled"},
            describe=dev.tail,
        )
    assert run["status"] == "succeeded", run
    assert {s["step_id"]: s["status"] for s in run["steps"]} == {"a": "succeeded", "b": "succeeded"}

    # SIGTERM to reflux dev: it stops, and so does every process it started.
    supervisors = children_of(dev.proc.pid)
    assert len(supervisors) == 6, supervisors
    dev.proc.send_signal(signal.SIGTERM)
    dev.proc.wait(60)
    left = [pid for pid in [*supervisors, *running] if _alive(pid)]
    assert not left, {pid: _cmdline(pid) for pid in left}
