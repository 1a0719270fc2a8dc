"""Unit tests of the Hatchet peer's pure parts (no server, no hatchet-sdk needed)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from benchmarks.peer_hatchet import driver_argv, driver_env
from benchmarks.peers.hatchet_results import (
    DONE_KEY,
    FIRST_STEP_KEY,
    PREFIX,
    first_step_began,
    task_name,
    worker_ready,
    workflow_name,
)
from benchmarks.peers.timings import STEPS_PER_RUN, RunTiming, summarize
from foundation.settings import PROJECT_ROOT, Settings
from infra.peers.hatchet import (
    DATABASE,
    HOST,
    REQUIREMENTS,
    HatchetPorts,
    HatchetServer,
    client_env,
    database_url,
    parse_token,
    render_env,
    wrapper_go_mod,
)
from infra.services.base import ServiceError

PLATFORM_DSN = "postgresql://reflux@127.0.0.1:15432/reflux?passfile=/v/credentials/postgres.pgpass"


def test_ports_are_distinct_and_not_hatchets_defaults() -> None:
    ports = HatchetPorts(17470).all()
    assert len(set(ports)) == len(ports) == 5
    # gRPC 7070/7077, API 8080, health 8733, lite 8081/8082/8888 (upstream's defaults).
    assert not {7070, 7077, 8080, 8733, 8081, 8082, 8888} & set(ports)
    assert HatchetPorts(20000).all()[0] == 20000


def test_database_url_is_the_platform_role_on_its_own_database() -> None:
    url = urlsplit(database_url(PLATFORM_DSN))
    assert url.path == f"/{DATABASE}"
    assert (url.username, url.hostname, url.port, url.password) == (
        "reflux",
        "127.0.0.1",
        15432,
        None,
    )
    query = parse_qs(url.query)
    assert query["passfile"] == ["/v/credentials/postgres.pgpass"]
    assert query["sslmode"] == ["disable"]


def test_database_url_keeps_an_explicit_sslmode_and_refuses_other_schemes() -> None:
    url = database_url("postgresql://u:p@db:5432/x?sslmode=require", "other")
    assert url == "postgresql://u:p@db:5432/other?sslmode=require"
    with pytest.raises(ServiceError, match="postgresql://"):
        database_url("mysql://u@h/x")


def test_server_env_binds_grpc_to_loopback_and_names_every_port(tmp_path: Path) -> None:
    ports = HatchetPorts(18000)
    env = render_env(ports, "postgresql://db", tmp_path)

    assert env["DATABASE_URL"] == "postgresql://db"
    assert env["SERVER_GRPC_PORT"] == "18000"
    assert env["SERVER_GRPC_BIND_ADDRESS"] == HOST == "127.0.0.1"
    assert env["SERVER_GRPC_BROADCAST_ADDRESS"] == "127.0.0.1:18000"
    assert env["SERVER_INTERNAL_CLIENT_INTERNAL_GRPC_BROADCAST_ADDRESS"] == "127.0.0.1:18000"
    assert env["SERVER_GRPC_INSECURE"] == "t"
    assert env["SERVER_MSGQUEUE_KIND"] == "postgres"
    assert env["SERVER_URL"] == f"http://127.0.0.1:{ports.api}"
    used = {
        int(env[k])
        for k in (
            "SERVER_PORT",
            "SERVER_HEALTHCHECK_PORT",
            "SERVER_GRPC_PORT",
            "LITE_FRONTEND_PORT",
            "LITE_RUNTIME_PORT",
        )
    }
    assert used == set(ports.all())
    assert env["LITE_STATIC_ASSET_DIR"] == str(tmp_path)
    assert int(env["DATABASE_MAX_CONNS"]) < 200  # the shared server's max_connections


def test_client_env_points_the_sdk_at_the_insecure_loopback_server() -> None:
    env = client_env(HatchetPorts(18000), "a.b.c")
    assert env == {
        "HATCHET_CLIENT_TOKEN": "a.b.c",
        "HATCHET_CLIENT_TLS_STRATEGY": "none",
        "HATCHET_CLIENT_HOST_PORT": "127.0.0.1:18000",
        "HATCHET_CLIENT_SERVER_URL": "http://127.0.0.1:18001",
    }


def test_parse_token_takes_the_jwt_after_any_log_lines() -> None:
    output = "2026/12/07 09:02:09 loading config\nsome.dotted text\neyJh.eyJh.sig_-x\n\n"
    assert parse_token(output) == "eyJh.eyJh.sig_-x"
    with pytest.raises(ServiceError, match="JWT"):
        parse_token("2026/12/07 error: tenant not found\n")
    with pytest.raises(ServiceError):
        parse_token("a..c\n")


def test_wrapper_module_declares_a_module_and_the_go_version() -> None:
    text = wrapper_go_mod()
    assert re.search(r"^module \S+$", text, re.MULTILINE)
    assert re.search(r"^go 1\.\d+$", text, re.MULTILINE)
    assert "require" not in text  # `go get` adds the pinned commands


def test_requirements_pin_every_package_exactly() -> None:
    lines = [
        line.strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "hatchet-sdk==1.43.1" in lines
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", line) for line in lines)
    names = [line.split("==")[0].lower().replace("_", "-") for line in lines]
    assert len(names) == len(set(names))
    assert {"grpcio", "protobuf"} <= set(names)


def test_server_keeps_everything_under_var_peers_hatchet(tmp_path: Path) -> None:
    server = HatchetServer(Settings(data_dir=tmp_path))
    root = tmp_path / "peers" / "hatchet"
    for path in (
        server.log_file,
        server.pid_file,
        server.binary("hatchet-lite"),
        server.venv_python,
        server.token_file,
        server.static_dir,
        server.src_dir,
    ):
        assert root in path.parents
    assert server.env()["DATABASE_URL"].split("?")[0].endswith(f"/{DATABASE}")


def test_first_step_time_comes_from_step_zero_and_needs_every_step() -> None:
    result = {task_name(i): {DONE_KEY: 1.0} for i in range(1, STEPS_PER_RUN)}
    result[task_name(0)] = {FIRST_STEP_KEY: 1765098000.25}
    assert first_step_began(result, STEPS_PER_RUN) == 1765098000.25

    del result[task_name(7)]
    with pytest.raises(RuntimeError, match="step_7 are missing"):
        first_step_began(result, STEPS_PER_RUN)


@pytest.mark.parametrize("output", [{}, {FIRST_STEP_KEY: "soon"}, {FIRST_STEP_KEY: True}, None])
def test_first_step_time_refuses_a_step_zero_without_a_time(output: object) -> None:
    result = {task_name(i): {DONE_KEY: 1.0} for i in range(STEPS_PER_RUN)}
    result[task_name(0)] = output  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="step 0"):
        first_step_began(result, STEPS_PER_RUN)


def test_worker_is_ready_only_when_listed_active_under_its_name() -> None:
    assert worker_ready([{"name": "w1", "status": "ACTIVE"}], "w1")
    assert not worker_ready([{"name": "w1", "status": "INACTIVE"}], "w1")
    assert not worker_ready([{"name": "w0", "status": "ACTIVE"}], "w1")
    assert not worker_ready([], "w1")


def test_workflow_names_differ_per_invocation() -> None:
    first, second = workflow_name(), workflow_name()
    assert first != second
    assert first.startswith("reflux-peer-chain-")


def test_metrics_are_named_peer_hatchet() -> None:
    runs = [RunTiming(0.0, 0.001, 0.004, 0.5), RunTiming(1.0, 1.002, 1.005, 1.7)]
    metrics = summarize(runs, [(1000, 10.0)], prefix=PREFIX)
    assert set(metrics) == {
        f"peer_hatchet_{name}"
        for name in (
            "start_latency_p50_ms",
            "start_latency_p99_ms",
            "step_overhead_p50_ms",
            "step_overhead_p99_ms",
            "steps_per_s",
            "start_request_to_first_step_p50_ms",
            "start_request_to_first_step_p99_ms",
        )
    }
    assert metrics["peer_hatchet_steps_per_s"] == 100.0
    assert metrics["peer_hatchet_step_overhead_p50_ms"] == pytest.approx(60.0)


def test_driver_runs_in_the_peer_venv_with_only_the_project_root_on_its_path(
    tmp_path: Path,
) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    argv = driver_argv(python, tmp_path / "o.json", tmp_path / "w.log", quick=True)
    assert argv[:3] == [str(python), "-m", "benchmarks.peers.hatchet_driver"]
    assert argv[-1] == "--quick"
    assert "--quick" not in driver_argv(python, tmp_path / "o", tmp_path / "w", quick=False)

    base = {"PATH": "/usr/bin", "VIRTUAL_ENV": "/project/.venv", "PYTHONPATH": "/elsewhere"}
    env = driver_env(base, {"HATCHET_CLIENT_TOKEN": "t"})
    assert env["PYTHONPATH"] == str(PROJECT_ROOT)
    assert "VIRTUAL_ENV" not in env
    assert env["HATCHET_CLIENT_TOKEN"] == "t"
    assert env["PATH"] == "/usr/bin"
