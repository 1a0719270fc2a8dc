"""The CLI's output against a real API and engine (issue 14 item 5): each command run as its own
process, as a user runs it, so its stdout and stderr are what a terminal or a pipe gets.

- ``--json`` parses and is the API's body;
- stdout is only the command's answer and a read command's stderr is empty: no library log lines
  (httpx logs every request at INFO), no progress bar;
- ``reflux run --count`` draws its bar on stderr when forced (``REFLUX_PROGRESS=always``) and
  not at all when stderr is a pipe.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reflux.credentials import api_client
from tests.integration.engine_fixtures import Harness
from tests.integration.test_cli_client import api_url  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
# logging's format in reflux/cli.py ("2026-12-06 20:41:36,123 INFO httpx: ...") and httpx's line.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR)\b")
BAR_TEXT = "starting runs"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REFLUX_PROGRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return env | extra


def reflux(*args: str, **env: str) -> subprocess.Popen[str]:
    """``reflux ARGS`` in a process of its own, stdout and stderr each a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "reflux.cli", *args],
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def assert_clean(name: str, out: str, err: str) -> None:
    logged = [line for line in out.splitlines() if LOG_LINE.match(line)]
    assert not logged, f"{name}: log lines on stdout: {logged}"
    assert "HTTP Request" not in out + err, f"{name}: httpx's request log:\n{err}"
    assert err == "", f"{name}: a read command wrote to stderr:\n{err}"


WORKFLOW = {
    "id": "cli_output",
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


def _accepted(out: str) -> list[str]:
    return [
        line.split()[1]
        for line in out.splitlines()
        if line.startswith("run ") and line.endswith(" accepted")
    ]


@pytest.fixture
def started(harness: Harness, api_url: str, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """Three runs started by ``reflux run --count 3 --wait`` with the bar forced."""
    path = tmp_path / "cli_output.json"
    path.write_text(json.dumps(WORKFLOW))
    code, out, err = finish(
        reflux(
            "run", str(path), "-i", "n=3", "--count", "3", "--concurrency", "2", "--wait",
            "--timeout", "120", "--api", api_url,
            REFLUX_PROGRESS="always",
        )
    )  # fmt: skip
    assert code == 0, f"{out}\n{err}"
    return {"out": out, "err": err, "run_ids": _accepted(out), "file": path}


def test_bulk_start_draws_its_bar_on_stderr_only_when_forced(
    started: dict[str, Any],
    api_url: str,  # noqa: F811
) -> None:
    out, err = started["out"], started["err"]
    assert len(started["run_ids"]) == 3
    assert out.splitlines()[-1] == "3 runs: 3 succeeded"
    assert "3/3" in err and BAR_TEXT in err and "runs ended" in err  # the bars' final state
    assert BAR_TEXT not in out and "━" not in out
    assert_clean("run --count", out, "")
    # The same command with stderr a pipe and nothing forced: no bar at all.
    code, out, err = finish(
        reflux("run", str(started["file"]), "-i", "n=1", "--count", "2", "--api", api_url)
    )
    assert code == 0, err
    assert len(_accepted(out)) == 2
    assert err == "", f"a bar (or a log line) on a pipe:\n{err}"


def test_read_commands_print_the_apis_json_and_nothing_else(
    started: dict[str, Any],
    api_url: str,  # noqa: F811
) -> None:
    run_id = started["run_ids"][0]
    api = ("--api", api_url)
    # command -> (its argv, the API paths its --json must equal)
    reads: dict[str, tuple[list[str], Any]] = {
        "runs list": (["runs", "list", "--workflow", "cli_output", *api], "/v1/runs"),
        "runs show": (["runs", "show", run_id, *api], None),
        "runs graph": (["runs", "graph", run_id, *api], f"/v1/runs/{run_id}/graph"),
        "workflows list": (["workflows", "list", *api], "/v1/workflows"),
        "workflows show": (["workflows", "show", "cli_output", *api], "/v1/workflows/cli_output"),
        "nodes list": (["nodes", "list", *api], "/v1/nodes"),
        "api-keys list": (["api-keys", "list"], "/v1/api-keys"),
    }
    running = {
        (name, form): reflux(*argv, *(["--json"] if form == "json" else []))
        for name, (argv, _) in reads.items()
        for form in ("text", "json")
    }
    results = {key: finish(process) for key, process in running.items()}
    with api_client(api_url) as client:
        for (name, form), (code, out, err) in results.items():
            assert code == 0, f"{name} {form}: {err}"
            assert_clean(f"{name} {form}", out, err)
            if form == "text":
                assert out.strip() and not out.lstrip().startswith("{"), f"{name}: {out}"
                continue
            printed = json.loads(out)
            path = reads[name][1]
            if name == "runs list":
                expected = client.get(path, params={"workflow_id": "cli_output"}).json()
                assert {r["run_id"] for r in printed["data"]} >= set(started["run_ids"])
            elif name == "runs show":
                expected = {
                    "run": client.get(f"/v1/runs/{run_id}").json(),
                    "events": client.get(f"/v1/runs/{run_id}/events").json()["data"],
                }
                assert printed["run"]["status"] == "succeeded"
            else:
                expected = client.get(path).json()
            if name == "api-keys list":
                # The CLI reads Postgres directly (every tenant); the API shows the caller's.
                by_id = {k["id"]: k for k in printed["data"]}
                assert all(by_id[k["id"]] == k for k in expected["data"]), name
                continue
            assert printed == expected, name
