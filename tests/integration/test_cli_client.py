"""``reflux run FILE --wait`` and ``reflux runs show`` against a real API and engine."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import uvicorn

from api.app import create_app
from api.config import ApiSettings
from reflux.cli import main
from tests.integration.engine_fixtures import Harness
from tests.support.waiting import eventually


@pytest.fixture
def api_url(harness: Harness) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_schema = f"{harness.schema}_api"
    app = create_app(
        harness.settings,
        ApiSettings(
            read_schema=harness.schema,
            api_schema=api_schema,
            poll_interval_s=0.05,
            clickhouse_enabled=False,  # one chdb per process: metrics live in test_traces.py
        ),
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not server.started and not thread.is_alive():
            pytest.fail(f"the API server thread ended before listening on port {port}")
        return server.started

    eventually(started, 20, f"the API to listen on port {port}")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


def test_run_a_file_and_show_its_timeline(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workflow = tmp_path / "double.json"
    workflow.write_text(
        json.dumps(
            {
                "id": "double",
                "inputs": {"n": {"type": "integer", "required": True}},
                "steps": [
                    {
                        "id": "twice",
                        "node": "transform@^1",
                        "params": {"expression": "[n, n]", "data": {"n": "{{ inputs.n }}"}},
                    }
                ],
                "outputs": {"pair": "{{ steps.twice.output.result }}"},
            }
        )
    )
    code = main(
        ["run", str(workflow), "--input", "n=4", "--wait", "--timeout", "60", "--api", api_url]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "registered double version 1" in out
    assert "RunSucceeded" in out and '"pair": [4, 4]' in out
    run_id = next(
        line.split()[1]
        for line in out.splitlines()
        if line.startswith("run ") and line.endswith("accepted")
    )
    assert main(["runs", "show", run_id, "--api", api_url]) == 0
    shown = capsys.readouterr().out
    assert f"run {run_id}" in shown and "status=succeeded" in shown
    assert "twice" in shown and "StepSucceeded" in shown


def test_bad_input_is_reported_clearly(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workflow = tmp_path / "broken.yaml"
    workflow.write_text(
        "id: broken\nsteps:\n  - id: a\n    node: transform@^1\n"
        "    needs: [missing]\n    params: {expression: '`1`'}\n"
    )
    assert main(["run", str(workflow), "--api", api_url]) == 2
    err = capsys.readouterr().err
    assert "422" in err and "steps.0.needs.0" in err and "missing" in err
    assert main(["run", str(workflow), "--input", "oops", "--api", api_url]) == 2
