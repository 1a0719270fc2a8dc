"""Unit tests of the Restate peer's pure parts (no server, no restate-sdk, no aiohttp)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from benchmarks.peers.restate_workloads import (
    CALLED_HANDLER,
    JOURNALED_HANDLER,
    RUN_SERVICE,
    WORKLOADS,
    attach_path,
    cpu_seconds_from_stat,
    cpu_share,
    first_step_of,
    invocation_id_of,
    run_output,
)
from benchmarks.peers.timings import STEPS_PER_RUN, RunTiming, summarize
from infra.peers.restate import (
    HOST,
    NODE_NAME,
    REQUIREMENTS_FILE,
    RestatePorts,
    installed_npm_version,
    pinned_version,
    registration_body,
    render_config,
    requirements_digest,
)

# Restate's own listeners (ingress, admin, its old pgsql port, fabric) and its SDK examples' port.
RESTATE_DEFAULT_PORTS = {8080, 9070, 9071, 5122, 9080}


def test_ports_are_distinct_and_not_restates_defaults() -> None:
    ports = RestatePorts(18780)
    used = [*ports.server_ports(), ports.endpoint]
    assert len(set(used)) == len(used) == 4
    assert not RESTATE_DEFAULT_PORTS & set(used)
    assert RestatePorts(20000).admin == 20001


def test_config_is_toml_binding_every_listener_to_loopback(tmp_path: Path) -> None:
    base = tmp_path / 'data "quoted" \\ dir'
    config = tomllib.loads(render_config(RestatePorts(18780), base))

    assert config["base-dir"] == str(base)
    assert config["node-name"] == NODE_NAME
    assert config["listen-mode"] == "tcp"
    assert config["disable-telemetry"] is True
    assert config["bind-address"] == f"{HOST}:18782"
    assert config["advertised-address"] == f"http://{HOST}:18782"
    assert config["ingress"]["bind-address"] == f"{HOST}:18780"
    assert config["admin"]["bind-address"] == f"{HOST}:18781"
    # 1.7.12 has no PostgreSQL-protocol listener; setting its address would only mislead.
    assert "query-engine" not in config["admin"]


def test_registration_names_the_endpoint() -> None:
    assert registration_body("http://127.0.0.1:18783") == {"uri": "http://127.0.0.1:18783"}


def test_requirements_pin_every_package_exactly() -> None:
    text = REQUIREMENTS_FILE.read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines
    assert all("==" in line and ";" not in line for line in lines)
    assert pinned_version(text, "restate-sdk") == "1.3.0"
    assert pinned_version(text, "hypercorn") == "0.18.0"
    assert pinned_version(text, "typing-extensions") == pinned_version(text, "typing_extensions")


def test_pinned_version_refuses_an_unpinned_package() -> None:
    with pytest.raises(ValueError, match="Expected httpx to be pinned"):
        pinned_version("httpx>=0.28\n# httpx==0.1\n", "httpx")


def test_requirements_digest_tracks_the_text() -> None:
    assert requirements_digest("a==1\n") == requirements_digest("a==1\n")
    assert requirements_digest("a==1\n") != requirements_digest("a==2\n")


def test_installed_npm_version(tmp_path: Path) -> None:
    package = tmp_path / "package.json"
    assert installed_npm_version(package) is None
    package.write_text(json.dumps({"name": "@restatedev/restate-server", "version": "1.7.12"}))
    assert installed_npm_version(package) == "1.7.12"
    package.write_text("{not json")
    assert installed_npm_version(package) is None


def test_workloads_are_the_two_kinds_of_step() -> None:
    assert [w.prefix for w in WORKLOADS] == ["peer_restate", "peer_restate_call"]
    assert [w.send_path for w in WORKLOADS] == [
        f"/{RUN_SERVICE}/{JOURNALED_HANDLER}/send",
        f"/{RUN_SERVICE}/{CALLED_HANDLER}/send",
    ]
    assert [w.call_path for w in WORKLOADS] == [
        f"/{RUN_SERVICE}/{JOURNALED_HANDLER}",
        f"/{RUN_SERVICE}/{CALLED_HANDLER}",
    ]
    assert attach_path("inv_1abc") == "/restate/invocation/inv_1abc/attach"


def test_invocation_id_of_a_send_answer() -> None:
    body = {"invocationId": "inv_1g56RwWxSvhc37SMSKrLsrORBq2h95NXpg", "status": "Accepted"}
    assert invocation_id_of(body) == body["invocationId"]
    with pytest.raises(ValueError, match="status Accepted"):
        invocation_id_of({**body, "status": "PreviouslyAccepted"})
    with pytest.raises(ValueError, match="invocation id"):
        invocation_id_of({"invocationId": 7, "status": "Accepted"})
    with pytest.raises(ValueError, match="status Accepted"):
        invocation_id_of(["inv_1"])


def test_first_step_of_a_run_output_checks_the_steps() -> None:
    stamps = [1000.0 + i for i in range(STEPS_PER_RUN)]
    # The output crosses JSON between the endpoint and the driver.
    assert first_step_of(json.loads(json.dumps(run_output(stamps)))) == 1000.0
    with pytest.raises(ValueError, match=f"Expected {STEPS_PER_RUN} steps"):
        first_step_of(run_output(stamps[:3]))
    with pytest.raises(ValueError, match="start time"):
        first_step_of({"steps": float(STEPS_PER_RUN), "first_step_at": "soon"})


def test_cpu_seconds_from_a_proc_stat_line() -> None:
    # A command name with a space and a ")" must not shift the fields; utime 250, stime 50.
    stat = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 100"
    assert cpu_seconds_from_stat(stat, 100) == pytest.approx(3.0)
    assert cpu_share(0.5, 2.0) == 0.25
    with pytest.raises(ValueError, match="positive duration"):
        cpu_share(1.0, 0.0)


def test_both_step_kinds_report_the_full_key_set_without_overlap() -> None:
    runs = [RunTiming(0.0, 0.002, 0.004, 0.02), RunTiming(1.0, 1.002, 1.005, 1.03)]
    journaled = summarize(runs, [(1000, 0.5)], prefix=WORKLOADS[0].prefix)
    called = summarize(runs, [(1000, 4.0)], prefix=WORKLOADS[1].prefix)

    assert not set(journaled) & set(called)
    assert {key.removeprefix("peer_restate_") for key in journaled} == {
        key.removeprefix("peer_restate_call_") for key in called
    }
    assert journaled["peer_restate_steps_per_s"] == 2000.0
    assert called["peer_restate_call_steps_per_s"] == 250.0
