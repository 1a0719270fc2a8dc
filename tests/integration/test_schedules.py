"""Schedules on the real services (ADR 0056).

- A schedule firing every second, its processor a separate ``reflux schedules run`` process that
  is ``kill -9``'d and started again: every slot of the window starts exactly one run (counted
  on the commands topic by the slot-derived run ids, and as runs in the read model), and the
  slots of the downtime follow the catch-up policy (``all``: fired late; ``skip``: not fired).
- The API: create, list, read, pause, resume, delete; tenant scoping; field-path errors; a
  schedule created over the API fires in ``reflux dev``'s engine (``DevEngine(schedules=True)``).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from api.app import create_app
from api.config import ApiSettings
from processors.schedules.firing import run_id_for_slot
from reflux.cli import main
from schemas import serde
from schemas.models import CatchupPolicy, OverlapPolicy, Schedule, StartRun
from streams.table import KeyedTableReader
from tests.integration.engine_fixtures import Harness, HarnessFactory, api_client, transform
from tests.integration.http_fixtures import HttpTestServer
from tests.support.api_auth import key_headers
from tests.support.processes import Component, wait_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WORKFLOW = {
    "id": "tick",
    "steps": [transform("echo", "data", {"ok": True})],
}


class Commands:
    """Every committed ``StartRun`` on the commands topic, by run id (read_committed)."""

    def __init__(self, harness: Harness) -> None:
        self.starts: Counter[str] = Counter()
        self.slots: dict[str, str] = {}
        self._reader = KeyedTableReader(
            harness.settings, harness.engine.catalog.commands.topic, self._apply, name="test"
        )

    def _apply(self, key: str, value: bytes | None, _partition: int) -> None:
        if value is None:
            return
        record = serde.decode(value)
        if isinstance(record, StartRun) and record.source == "schedule":
            self.starts[record.run_id] += 1
            # "schedule:<schedule id>@<slot>"
            self.slots[record.run_id] = str(record.idempotency_key).removeprefix("schedule:")

    def read(self) -> Counter[str]:
        self._reader.catch_up(10.0)
        return self.starts

    def close(self) -> None:
        self._reader.close()


def _schedule(schedule_id: str, catchup: CatchupPolicy, window_ms: int) -> Schedule:
    now = datetime.now(UTC)
    return Schedule(
        schedule_id=schedule_id,
        tenant="default",
        workflow_id="tick",
        cron="* * * * * *",
        timezone="UTC",
        catchup=catchup,
        catchup_window_ms=window_ms,
        overlap=OverlapPolicy.ALLOW,
        inputs={},
        created_at=now - timedelta(microseconds=now.microsecond),
    )


def _slot(seconds: float) -> datetime:
    instant = datetime.fromtimestamp(seconds, UTC)
    return instant - timedelta(microseconds=instant.microsecond)


@pytest.mark.parametrize("catchup", [CatchupPolicy.ALL, CatchupPolicy.SKIP])
def test_every_second_across_kill9_fires_each_slot_exactly_once(
    harness: Harness, tmp_path: Path, catchup: CatchupPolicy
) -> None:
    harness.register(WORKFLOW)
    schedule_id = f"every-second-{catchup.value}"
    # skip: a slot more than 1 s late at the restart is missed (the downtime is longer).
    window_ms = 60_000 if catchup is CatchupPolicy.ALL else 1_000
    schedule = _schedule(schedule_id, catchup, window_ms)
    harness.send(harness.engine.catalog.schedules.topic, schedule_id, schedule)
    processor = Component(
        "schedules",
        ["schedules", "run", "--instance-id", "test-sched", "--schema", harness.schema],
        harness.settings,
        tmp_path,
    )
    commands = Commands(harness)
    try:
        processor.start()
        wait_for(lambda: len(commands.read()) >= 3, 60, "3 slots fired", processor)
        processor.kill9()
        killed_at = time.time()
        fired_before_kill = set(commands.read())
        # The downtime the catch-up policy is about: a deliberate 3 s outage, not a wait for
        # something to happen (the restart's own start-up adds ~2 s).
        time.sleep(3)
        processor.start()
        restarted_at = time.time()

        def fired_past_restart() -> bool:
            slots = {commands.slots[r] for r in commands.read()}
            latest = max(slots)
            return latest >= f"{schedule_id}@{_slot(restarted_at + 3).isoformat()[:19]}"

        wait_for(fired_past_restart, 60, "slots after the restart", processor)
        processor.stop()
        starts = commands.read()
    finally:
        processor.stop()
        commands.close()

    # Exactly once: no run id was started twice, in spite of the kill and the restart.
    doubles = {commands.slots[r]: n for r, n in starts.items() if n != 1}
    assert not doubles, f"slots fired more than once: {doubles}\n{processor.tail()}"
    by_slot = {datetime.fromisoformat(commands.slots[r].split("@", 1)[1]): r for r in starts}
    first, last = min(by_slot), max(by_slot)
    window = [first + timedelta(seconds=s) for s in range(int((last - first).total_seconds()) + 1)]
    for slot, run_id in by_slot.items():  # the run ids are the slot-derived ones
        assert run_id == run_id_for_slot(schedule_id, slot)
    missing = [s for s in window if s not in by_slot]
    down = [s for s in window if killed_at - 1 < s.timestamp() < restarted_at - 1]
    assert len(down) >= 3, (
        f"expected a downtime of several slots, got {down} (killed {killed_at}, restarted "
        f"{restarted_at}, fired {first}..{last})"
    )
    if catchup is CatchupPolicy.ALL:
        assert missing == [], f"missed slots with catch-up all: {missing}\n{processor.tail()}"
    else:
        # skip: the slots of the downtime older than the 1 s window when the processor was back
        # did not fire; they are one gap, after the kill; every slot around it fired.
        assert len(missing) >= 2, f"catch-up skip fired the downtime slots: {missing}"
        gap = [missing[0] + timedelta(seconds=n) for n in range(len(missing))]
        assert missing == gap, f"expected one gap of skipped slots, got {missing}"
        assert missing[0].timestamp() >= killed_at - 1, (missing, killed_at)
        assert fired_before_kill <= set(starts)
    # Each fired slot started a run, once, in the engine.
    for run_id in list(starts)[:5] + list(starts)[-3:]:
        assert harness.wait(run_id).status == "succeeded"
    eventually(
        lambda: _projected(harness, list(starts)) == len(starts),
        30,
        "every fired slot's run projected",
    )


def _projected(harness: Harness, run_ids: list[str]) -> int:
    with harness.conn() as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{harness.schema}".runs WHERE run_id = ANY(%s)', (run_ids,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_schedules_api_and_the_dev_engine(engine_harness: HarnessFactory) -> None:
    harness = engine_harness(schedules=True)
    harness.register(WORKFLOW)
    harness.register({**WORKFLOW, "id": "beta-flow"}, tenant="beta")
    api = ApiSettings(read_schema=harness.schema, api_schema=f"{harness.schema}_api")
    with api_client(harness) as client:
        eventually(
            lambda: client.get("/v1/workflows/tick").status_code == 200, 30, "workflow projected"
        )
        bad = client.post(
            "/v1/schedules",
            json={"workflow_id": "tick", "cron": "61 * * * *", "timezone": "Mars/Base"},
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["detail"][0]["loc"] == ["body", "timezone"]
        bad_cron = client.post("/v1/schedules", json={"workflow_id": "tick", "cron": "* *"})
        assert bad_cron.status_code == 422 and bad_cron.json()["detail"][0]["loc"] == [
            "body",
            "cron",
        ]
        jitter = client.post(
            "/v1/schedules",
            json={"workflow_id": "tick", "cron": "* * * * *", "jitter_s": 90},
        )
        assert jitter.status_code == 422 and jitter.json()["detail"][0]["loc"] == [
            "body",
            "jitter_s",
        ]
        never = client.post("/v1/schedules", json={"workflow_id": "tick", "cron": "0 0 31 2 *"})
        assert never.status_code == 422 and "never" in never.json()["detail"][0]["msg"]
        missing = client.post("/v1/schedules", json={"workflow_id": "nope", "cron": "* * * * *"})
        assert missing.status_code == 404
        body: dict[str, Any] = {
            "schedule_id": "api-every-second",
            "workflow_id": "tick",
            "cron": "* * * * * *",
            "timezone": "Europe/Berlin",
            "catchup": "one",
            "overlap": "allow",
        }
        created = client.post("/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        assert len(created.json()["next_slots"]) == 3
        assert client.post("/v1/schedules", json=body).status_code == 409
        listed = client.get("/v1/schedules").json()
        assert [s["schedule_id"] for s in listed["data"]] == ["api-every-second"]

        # The engine's schedule processor fires it: runs with slot-derived ids succeed.
        def started() -> list[str]:
            with harness.conn() as conn:
                rows = conn.execute(
                    f"SELECT run_id FROM \"{harness.schema}\".runs WHERE status = 'succeeded'"
                ).fetchall()
            return [str(r[0]) for r in rows]

        eventually(lambda: len(started()) >= 2, 60, "two scheduled runs succeeded")

        paused = client.post("/v1/schedules/api-every-second/pause")
        assert paused.status_code == 200 and paused.json()["paused"] is True
        assert paused.json()["next_slots"] == []
        resumed = client.post("/v1/schedules/api-every-second/resume")
        assert resumed.json()["paused"] is False and resumed.json()["resumed_at"]

        # Another tenant sees nothing of it: 404 as if missing, absent from its list.
        beta = key_headers(harness.settings, api, name="beta-editor", tenant="beta")
        assert client.get("/v1/schedules/api-every-second", headers=beta).status_code == 404
        assert client.delete("/v1/schedules/api-every-second", headers=beta).status_code == 404
        assert client.get("/v1/schedules", headers=beta).json()["count"] == 0
        # ... and cannot schedule a workflow that is not its own.
        other = client.post("/v1/schedules", json={**body, "schedule_id": "x"}, headers=beta)
        assert other.status_code == 404

        assert client.delete("/v1/schedules/api-every-second").status_code == 204
        assert client.get("/v1/schedules/api-every-second").status_code == 404
        assert client.get("/v1/schedules").json()["count"] == 0


def test_two_instances_share_the_schedules_and_one_takes_over_after_kill9(
    harness: Harness, tmp_path: Path
) -> None:
    """Several instances: each schedule has one owner (its partition's); when one instance is
    killed, the other takes its partitions over (fencing the dead one's transactions) and
    catches up: every slot of every schedule fires exactly once."""
    harness.register(WORKFLOW)
    ids = [f"shared-{n}" for n in range(6)]
    for schedule_id in ids:
        schedule = _schedule(schedule_id, CatchupPolicy.ALL, 120_000)
        harness.send(harness.engine.catalog.schedules.topic, schedule_id, schedule)
    instances = [
        Component(
            name,
            ["schedules", "run", "--instance-id", name, "--schema", harness.schema],
            harness.settings,
            tmp_path,
        )
        for name in ("sched-a", "sched-b")
    ]
    commands = Commands(harness)

    def latest(schedule_id: str) -> str:
        slots = [s for s in commands.slots.values() if s.startswith(f"{schedule_id}@")]
        return max(slots, default="")

    try:
        for instance in instances:
            instance.start()
        wait_for(
            lambda: bool(commands.read()) and all(latest(i) for i in ids),
            60,
            "every schedule fired",
            *instances,
        )
        # Both own partitions before one dies (the group has settled).
        wait_for(
            lambda: all(_owned(i) for i in instances),
            60,
            "both instances own partitions",
            *instances,
        )
        instances[0].kill9()
        killed_at = time.time()

        def all_past_kill() -> bool:
            commands.read()
            mark = f"@{_slot(killed_at + 3).isoformat()[:19]}"
            return all(latest(i).split("@")[1] >= mark[1:] for i in ids)

        # The survivor gets the dead one's partitions when its session times out (10 s).
        wait_for(all_past_kill, 90, "every schedule fired after the kill", instances[1])
        instances[1].stop()
        starts = commands.read()
    finally:
        for instance in instances:
            instance.stop()
        commands.close()
    doubles = {commands.slots[r]: n for r, n in starts.items() if n != 1}
    assert not doubles, f"slots fired more than once: {doubles}"
    for schedule_id in ids:
        slots = sorted(
            datetime.fromisoformat(s.split("@", 1)[1])
            for s in commands.slots.values()
            if s.startswith(f"{schedule_id}@")
        )
        expected = [
            slots[0] + timedelta(seconds=n)
            for n in range(int((slots[-1] - slots[0]).total_seconds()) + 1)
        ]
        assert slots == expected, f"{schedule_id}: missed {sorted(set(expected) - set(slots))}"
    # The survivor took the dead one's partitions: it ended up owning all of them.
    assert _owned(instances[1]) == set(range(harness.settings.default_partitions))


def _owned(instance: Component) -> set[int]:
    """The partitions ``instance`` said it owns last (its log)."""
    found = re.findall(r"owns partitions (set\(\)|\{[\d, ]*\})", instance.tail(100_000))
    if not found or found[-1] == "set()":
        return set()
    return {int(p) for p in found[-1].strip("{}").split(",")}


@pytest.mark.parametrize("overlap", [OverlapPolicy.SKIP, OverlapPolicy.CANCEL_PREVIOUS])
def test_overlap_policies_with_runs_longer_than_the_interval(
    engine_harness: HarnessFactory, http: HttpTestServer, overlap: OverlapPolicy
) -> None:
    """Runs of 2.5 s on an every-second schedule: ``skip`` never has two runs in flight (the
    HTTP server counts them); ``cancel_previous`` cancels the running one when the next is due."""
    harness = engine_harness(schedules=True)
    harness.register(
        {
            "id": "slow",
            "steps": [
                {
                    "id": "wait",
                    "node": "http.request@^1",
                    "params": {"url": f"{http.url}/slow?ms=2500"},
                }
            ],
        }
    )
    schedule = _schedule("slow-every-second", CatchupPolicy.SKIP, 5_000).model_copy(
        update={"workflow_id": "slow", "overlap": overlap}
    )
    # The workflow must be in the scheduler's view before the first slot starts a run of it.
    eventually(lambda: _registered(harness, "slow"), 30, "workflow projected")
    harness.send(harness.engine.catalog.schedules.topic, schedule.schedule_id, schedule)

    def statuses() -> Counter[str]:
        with harness.conn() as conn:
            rows = conn.execute(
                f"SELECT status FROM \"{harness.schema}\".runs WHERE workflow_id = 'slow'"
            ).fetchall()
        return Counter(str(r[0]) for r in rows)

    if overlap is OverlapPolicy.SKIP:
        eventually(lambda: statuses()["succeeded"] >= 2, 60, "two runs succeeded")
        assert http.in_flight_max == 1, "two runs of a skip schedule were in flight at once"
        assert statuses()["cancelled"] == 0
    else:
        eventually(lambda: statuses()["cancelled"] >= 2, 60, "two runs cancelled by the next")
        assert statuses()["succeeded"] == 0, statuses()
        assert statuses()["running"] <= 1, statuses()


def _registered(harness: Harness, workflow_id: str) -> bool:
    with harness.conn() as conn:
        row = conn.execute(
            f'SELECT 1 FROM "{harness.schema}".workflows WHERE workflow_id = %s', (workflow_id,)
        ).fetchone()
    return row is not None


@pytest.fixture
def api_url(harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API over the harness, served by uvicorn, and an admin key file the CLI reads (as
    tests/integration/test_cli_client.py does)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = ApiSettings(
        read_schema=harness.schema,
        api_schema=f"{harness.schema}_api",
        poll_interval_s=0.05,
        clickhouse_enabled=False,
    )
    key_file = tmp_path / "api-key"
    key_file.write_text(key_headers(harness.settings, api)["Authorization"].split()[1])
    monkeypatch.delenv("REFLUX_API_KEY", raising=False)
    monkeypatch.setenv("REFLUX_API_KEY_FILE", str(key_file))
    app = create_app(harness.settings, api)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started or not thread.is_alive(), 20, "the API listening")
    assert server.started, "the API server thread ended before listening"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_the_schedules_cli(
    harness: Harness, api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.register(WORKFLOW)
    eventually(lambda: _registered(harness, "tick"), 30, "workflow projected")
    api = ["--api", api_url]
    create = ["schedules", "create", "tick", "--id", "weekdays", "--cron", "0 9 * * 1-5"]
    options = ["--timezone", "Europe/Berlin", "--catchup", "one"]
    # Inputs are checked against the workflow when the schedule is created.
    assert main([*create, *options, "--input", "region=eu", *api]) == 2
    assert "inputs.region: unknown input 'region'" in capsys.readouterr().err
    assert main([*create, *options, *api]) == 0
    out = capsys.readouterr().out
    assert "schedule weekdays (active) -> workflow tick" in out
    assert "catch-up one" in out and "Europe/Berlin" in out
    # The next slot is a weekday 09:00 in Berlin: 07:00 or 08:00 UTC.
    assert "T07:00:00Z" in out or "T08:00:00Z" in out, out
    assert main(["schedules", "list", *api]) == 0
    assert "schedule weekdays" in capsys.readouterr().out
    # --json: the API's body as one JSON document, nothing else on stdout.
    assert main(["schedules", "list", "--json", *api]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["schedule_id"] for s in listed["data"]] == ["weekdays"]
    assert main(["schedules", "show", "weekdays", "--json", *api]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["schedule_id"] == "weekdays" and shown["timezone"] == "Europe/Berlin"
    assert main(["schedules", "pause", "weekdays", *api]) == 0
    assert "(paused)" in capsys.readouterr().out
    assert main(["schedules", "resume", "weekdays", *api]) == 0
    assert "(active)" in capsys.readouterr().out
    assert main(["schedules", "delete", "weekdays", *api]) == 0
    assert main(["schedules", "show", "weekdays", *api]) == 2
    assert "schedule 'weekdays' not found" in capsys.readouterr().err
    bad = ["schedules", "create", "tick", "--cron", "0 25 * * *", *api]
    assert main(bad) == 2
    assert "cron" in capsys.readouterr().err
