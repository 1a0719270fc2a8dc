"""``reflux run FILE --wait``, ``reflux runs show|graph|mutate`` against a real API and engine."""

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
from reflux.credentials import api_client
from tests.integration.engine_fixtures import Harness, transform
from tests.integration.http_fixtures import serve
from tests.support.waiting import eventually


@pytest.fixture
def api_url(
    harness: Harness, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_schema = f"{harness.schema}_api"
    # The key the real way (ADR 0046): `reflux api-keys create --write-to` (straight to the
    # API's Postgres schema, file mode 0600), then the CLI reads it from REFLUX_API_KEY_FILE.
    key_file = tmp_path_factory.mktemp("reflux-key") / "api-key"
    monkeypatch.setenv("REFLUX_API_API_SCHEMA", api_schema)
    monkeypatch.setenv("REFLUX_POSTGRES_DSN", harness.settings.postgres_dsn)
    args = ["api-keys", "create", "--role", "admin", "--name", "cli-test", "--write-to"]
    assert main([*args, str(key_file)]) == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv("REFLUX_API_KEY", raising=False)
    monkeypatch.setenv("REFLUX_API_KEY_FILE", str(key_file))
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


def test_mutate_a_running_run_and_show_its_graph(
    harness: Harness, api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve() as http_server:
        harness.register(
            {
                "id": "cli_mut",
                "steps": [
                    {
                        "id": "wait",
                        "node": "http.request@^1",
                        "params": {"url": f"{http_server.url}/gate?name=cli-mut"},
                    },
                    transform("after", "v", {"v": 1}, needs=["wait"]),
                ],
                "outputs": {"after": "{{ steps.after.output.result }}"},
            }
        )
        with api_client(api_url) as client:
            eventually(
                lambda: client.get("/v1/workflows/cli_mut").status_code == 200,
                15,
                "cli_mut projected",
            )
            run_id = client.post("/v1/runs", json={"workflow_id": "cli_mut"}).json()["run_id"]
        harness.wait_step(run_id, "wait", "running")
        data = json.dumps({"expression": "v", "data": {"v": 7}})
        mutate = ["runs", "mutate", run_id, "--op", "update_params", "--step", "after"]
        who = ["--reason", "seven is better", "--by", "cli-user", "--api", api_url]
        assert main([*mutate, "--data", data, *who]) == 0
        assert "applied: GraphMutated at seq" in capsys.readouterr().out
        refused = ["runs", "mutate", run_id, "--op", "remove_step", "--step", "wait"]
        assert main([*refused, "--api", api_url]) == 2
        assert "409: Expected step 'wait' to be pending" in capsys.readouterr().err
        # `wait` is held at the gate until now: the mutations above met a running run however
        # slowly they were answered.
        http_server.open_gate("cli-mut")
        assert harness.wait(run_id).outputs == {"after": 7}
        assert main(["runs", "graph", run_id, "--api", api_url]) == 0
        graph = capsys.readouterr().out
        assert "update_params  after            by cli-user: seven is better" in graph
        assert main(["runs", "show", run_id, "--api", api_url]) == 0
        assert "GraphMutated" in capsys.readouterr().out


def test_mutate_with_a_file_of_operations_is_all_or_nothing(
    harness: Harness, api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve() as http_server:
        harness.register(
            {
                "id": "cli_mut_file",
                "steps": [
                    {
                        "id": "wait",
                        "node": "http.request@^1",
                        "params": {"url": f"{http_server.url}/gate?name=cli-mut-file"},
                    },
                    transform("after", "v", {"v": 1}, needs=["wait"]),
                ],
                "outputs": {"after": "{{ steps.after.output.result }}"},
            }
        )
        with api_client(api_url) as client:
            eventually(
                lambda: client.get("/v1/workflows/cli_mut_file").status_code == 200,
                15,
                "cli_mut_file projected",
            )
            run_id = client.post("/v1/runs", json={"workflow_id": "cli_mut_file"}).json()["run_id"]
        harness.wait_step(run_id, "wait", "running")
        illegal = tmp_path / "illegal.json"
        illegal.write_text(
            json.dumps(
                [
                    {"type": "add_step", "step_id": "x", "data": transform("x", "v", {})},
                    {"type": "remove_step", "step_id": "wait"},
                ]
            )
        )
        mutate = ["runs", "mutate", run_id, "--api", api_url, "--wait-ms", "15000"]
        assert main([*mutate, "--file", str(illegal)]) == 2
        assert "409: mutations[1]: Expected step 'wait' to be pending" in capsys.readouterr().err
        ops = tmp_path / "ops.json"
        rewired = transform("after", "v", {"v": "{{ steps.seven.output.result }}"}, needs=["seven"])
        ops.write_text(
            json.dumps(
                {
                    "mutations": [
                        {
                            "type": "add_step",
                            "step_id": "seven",
                            "data": transform("seven", "v", {"v": 7}, needs=["wait"]),
                        },
                        {"type": "remove_step", "step_id": "after"},
                        {"type": "add_step", "step_id": "after", "data": rewired},
                    ],
                    "reason": "compute it upstream",
                }
            )
        )
        assert main([*mutate, "--file", str(ops), "--by", "cli-user"]) == 0
        assert "applied: GraphMutated at seq" in capsys.readouterr().out
        http_server.open_gate("cli-mut-file")  # `wait` was held until the mutations were in
        assert harness.wait(run_id).outputs == {"after": 7}
        assert main(["runs", "graph", run_id, "--api", api_url]) == 0
        graph = capsys.readouterr().out
        assert "add_step       seven            by cli-user: compute it upstream" in graph
        assert "remove_step    after" in graph and "x " not in graph
