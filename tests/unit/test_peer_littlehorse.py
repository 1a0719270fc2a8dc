"""Unit tests of the LittleHorse peer's pure parts (no server, no Kafka, no littlehorse SDK)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks.peers.littlehorse_shape import (
    JVM_WARMUP_BATCHES,
    KEY_PREFIX,
    SETUP_TIMEOUT_S,
    Names,
    child_timeout_s,
    driver_argv,
    read_result,
)
from benchmarks.peers.timings import FULL, METRIC_NAMES, QUICK, RunTiming, plan_for, summarize
from infra.peers.littlehorse import (
    CLUSTER_ID_PREFIX,
    HOST,
    REQUIREMENTS,
    SERVER_ARTIFACT,
    SERVER_VERSION,
    LittleHorsePorts,
    cluster_names,
    core_running,
    new_cluster_id,
    properties_text,
    render_pom,
    render_server_config,
)

POM = "{http://maven.apache.org/POM/4.0.0}"


def parse_properties(text: str) -> dict[str, str]:
    """Enough of java.util.Properties for what properties_text writes: key=value, \\\\ escapes."""
    result = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        result[key] = re.sub(r"\\(.)", r"\1", value)
    return result


def test_ports_are_distinct_and_not_littlehorse_defaults() -> None:
    ports = LittleHorsePorts().all()
    assert len(set(ports)) == len(ports)
    assert not {2023, 2011, 1822} & set(ports)


def test_server_config_advertises_loopback_and_uses_the_given_cluster(tmp_path: Path) -> None:
    ports = LittleHorsePorts(api=13023, internal=13011, health=13822)
    config = render_server_config(ports, "127.0.0.1:19092", "lhbench-0a1b2c3d", tmp_path / "s")

    assert config["LHS_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert config["LHS_CLUSTER_ID"] == "lhbench-0a1b2c3d"
    assert config["LHS_LISTENERS"] == "PLAIN:13023"
    assert config["LHS_ADVERTISED_LISTENERS"] == f"PLAIN://{HOST}:13023"
    assert config["LHS_INTERNAL_BIND_PORT"] == config["LHS_INTERNAL_ADVERTISED_PORT"] == "13011"
    assert config["LHS_INTERNAL_ADVERTISED_HOST"] == HOST
    assert config["LHS_HEALTH_SERVICE_PORT"] == "13822"
    assert config["LHS_SHOULD_CREATE_TOPICS"] == "true"
    assert config["LHS_REPLICATION_FACTOR"] == "1"
    assert config["LHS_STATE_DIR"] == str(tmp_path / "s")
    assert all(key.startswith("LHS_") for key in config)


def test_properties_file_round_trips_values_with_backslashes() -> None:
    config = {"LHS_STATE_DIR": r"C:\state\lh", "LHS_CLUSTER_ID": "lhbench-1"}
    text = properties_text(config)

    assert text.endswith("\n")
    assert parse_properties(text) == config


@pytest.mark.parametrize(
    "config", [{"LHS_X": "a\nLHS_Y=b"}, {"LHS X": "a"}, {"LHS_X=Y": "a"}, {"": "a"}]
)
def test_properties_file_refuses_what_it_cannot_write_plainly(config: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="one-line property"):
        properties_text(config)


def test_pom_depends_on_exactly_the_pinned_server() -> None:
    root = ET.fromstring(render_pom(SERVER_VERSION))
    deps = root.findall(f"{POM}dependencies/{POM}dependency")

    assert root.findtext(f"{POM}packaging") == "pom"
    assert [
        (d.findtext(f"{POM}groupId"), d.findtext(f"{POM}artifactId"), d.findtext(f"{POM}version"))
        for d in deps
    ] == [(*SERVER_ARTIFACT, SERVER_VERSION)]


def test_cluster_ids_are_fresh_and_name_only_their_own_topics() -> None:
    first, second = new_cluster_id(), new_cluster_id()
    assert first != second
    assert re.fullmatch(rf"{CLUSTER_ID_PREFIX}-[0-9a-f]{{8}}", first)

    topics = [
        "lhbench-ab-core-cmd",
        "lhbench-ab-timers",
        "lhbench-abcd-core-cmd",  # another cluster whose id starts with this one's
        "reflux.runs",
        "lhbench-ab",
    ]
    assert cluster_names("lhbench-ab", topics) == ["lhbench-ab-core-cmd", "lhbench-ab-timers"]


def test_core_running_needs_the_core_processor_running() -> None:
    assert core_running({"coreState": "RUNNING", "coreActiveTasks": []})
    assert not core_running({"coreState": "REBALANCING"})
    assert not core_running({})


def test_sdk_requirements_pin_every_package_and_match_the_server() -> None:
    pins = [
        line
        for line in REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", pin) for pin in pins), pins
    assert f"littlehorse-client=={SERVER_VERSION}" in pins


def test_names_are_per_invocation() -> None:
    one, other = Names("aaaa1111"), Names("bbbb2222")
    for name in ("task_def", "wf_spec", "done_event"):
        assert getattr(one, name) != getattr(other, name)
        assert getattr(one, name).endswith("aaaa1111")


def test_driver_command_line_and_timeout(tmp_path: Path) -> None:
    argv = driver_argv(tmp_path / "python", HOST, 12023, True, tmp_path / "o.json")

    assert argv[:3] == [str(tmp_path / "python"), "-m", "benchmarks.peers.littlehorse_driver"]
    assert argv[argv.index("--port") + 1] == "12023"
    assert argv[argv.index("--host") + 1] == HOST
    assert argv[-1] == "--quick"
    assert "--quick" not in driver_argv(tmp_path / "python", HOST, 1, False, tmp_path / "o")
    assert plan_for(True) is QUICK
    assert plan_for(False) is FULL
    assert argv[argv.index("--jvm-warmup-batches") + 1] == str(JVM_WARMUP_BATCHES)
    # Full plan: warm-up, the JVM's warm-up batches, latency and 3 throughput rounds, each at
    # most 300 s.
    assert child_timeout_s(FULL) == (5 + JVM_WARMUP_BATCHES) * 300 + SETUP_TIMEOUT_S


def test_read_result_accepts_what_summarize_writes_under_the_peer_prefix() -> None:
    runs = [RunTiming(0.0, 0.002, 0.001, 0.3), RunTiming(1.0, 1.003, 1.01, 1.25)]
    metrics = summarize(runs, [(1000, 17.5)], prefix=KEY_PREFIX)
    text = json.dumps({"metrics": metrics, "meta": {"runs_completed": 2}})

    parsed, meta = read_result(text)

    assert parsed == metrics
    assert set(parsed) == {f"peer_littlehorse_{name}" for name in METRIC_NAMES}
    assert parsed["peer_littlehorse_steps_per_s"] == pytest.approx(1000 / 17.5)
    # Step 0 may begin before RunWf's response arrives: a negative sample is kept, not hidden.
    assert parsed["peer_littlehorse_start_latency_p50_ms"] == pytest.approx(3.0)
    assert meta == {"runs_completed": 2}


@pytest.mark.parametrize(
    "document",
    [
        {"meta": {}},
        {"metrics": {"peer_temporal_steps_per_s": 1.0}},
        {"metrics": {f"peer_littlehorse_{name}": "fast" for name in METRIC_NAMES}},
        {"metrics": {f"peer_littlehorse_{name}": 1.0 for name in METRIC_NAMES}, "meta": []},
    ],
)
def test_read_result_refuses_a_malformed_driver_output(document: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Expected"):
        read_result(json.dumps(document))
