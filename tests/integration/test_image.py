"""The container image (`make image`, infra/image/): it builds here from the lock without a
registry, runs the CLI as a non-root user, and runs `reflux worker` against the local Kafka.

Slow (a build takes 3 to 4.5 minutes here: wheels of every dependency plus a docker build),
so it is marked ``image`` and left out of `make test` by ``addopts``; `make test-image` runs it
(``-m image``). Nothing is skipped: a missing dockerd or a failed build fails the test.
"""

# ruff: noqa: F401, F811  # pytest injects imported fixtures by parameter name

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from foundation.settings import Settings
from infra.image.build import IMAGE_LABEL, K8S_IMAGE, LOCAL_TAG, build_image, docker_env
from schemas.models import NodeHeartbeat, NodeInvocation, NodeResult, StepRef
from streams.consumer import Consumer
from streams.producer import Producer
from streams.topics import TopicCatalog
from tests.integration.kafka_fixtures import admin, catalog, drain, kafka_settings, topics

pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(900)]


def _docker(
    settings: Settings, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        env=docker_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def image(local_services: Settings) -> str:
    """``reflux:local`` built from this checkout (every run: the test checks the build too)."""
    seconds = build_image(local_services)
    print(f"image built in {seconds:.1f}s")
    return LOCAL_TAG


def test_image_runs_the_cli_as_non_root(image: str, local_services: Settings) -> None:
    done = _docker(local_services, "run", "--rm", image, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: reflux")
    assert "worker" in done.stdout and "scheduler" in done.stdout

    inspected = _docker(local_services, "image", "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    (attrs,) = json.loads(inspected.stdout)
    assert attrs["Config"]["User"] == "10001:10001"
    assert attrs["Config"]["Entrypoint"] == ["reflux"]
    print(f"image size {attrs['Size'] / 1e6:.0f} MB")
    # The k8s manifests' name is the same image.
    k8s_named = json.loads(_docker(local_services, "image", "inspect", K8S_IMAGE).stdout)
    assert k8s_named[0]["Id"] == attrs["Id"]

    # The build stage's image and the replaced image were pruned: disk stays at one image.
    leftover = _docker(
        local_services, "images", "--quiet",
        "--filter", "dangling=true", "--filter", f"label={IMAGE_LABEL}",
    )  # fmt: skip
    assert leftover.returncode == 0 and leftover.stdout == "", leftover

    # The API in the image finds the web console's build (served under /ui).
    console = _docker(
        local_services, "run", "--rm", "--entrypoint", "python", image, "-c",
        "from api.config import ApiSettings; d = ApiSettings().console_dir; "
        "print(d, (d / 'index.html').is_file())",
    )  # fmt: skip
    assert console.stdout.strip() == "/opt/reflux/console True", console

    whoami = _docker(local_services, "run", "--rm", "--entrypoint", "id", image)
    assert whoami.stdout.startswith("uid=10001(reflux) gid=10001(reflux)"), whoami.stdout
    # The k8s liveness probe's command exists in the image (`python -m foundation.liveness`).
    probe = _docker(
        local_services, "run", "--rm", "--entrypoint", "python", image,
        "-m", "foundation.liveness", "--help",
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr


def _invocation(n: int) -> NodeInvocation:
    invocation_id = str(uuid.uuid4())
    return NodeInvocation(
        run_id=f"run-{n}",
        seq=1,
        invocation_id=invocation_id,
        attempt=1,
        workflow_id="wf",
        workflow_version=1,
        step=StepRef(step_id="t", node="transform", node_version="1.0.0"),
        params={"expression": "n", "data": {"n": n}},
        idempotency_key=invocation_id,
    )


@pytest.fixture
def worker_container(image: str, topics: TopicCatalog, kafka_settings: Settings) -> Iterator[str]:
    """`reflux worker --nodes transform` in the image, on the host network (the local broker
    listens on 127.0.0.1), with this test's topic prefix; stopped (SIGTERM) afterwards."""
    name = f"reflux-worker-test-{uuid.uuid4().hex[:8]}"
    started = _docker(
        kafka_settings,
        "run", "--detach", "--name", name, "--network", "host",
        "--env", f"REFLUX_KAFKA_BOOTSTRAP={kafka_settings.kafka_bootstrap}",
        "--env", f"REFLUX_TOPIC_PREFIX={kafka_settings.topic_prefix}",
        "--env", f"REFLUX_DEFAULT_PARTITIONS={kafka_settings.default_partitions}",
        # Every start signalled at once (a transform ends within the default delay).
        "--env", "REFLUX_WORKER_START_SIGNAL_DELAY_MS=0",
        image,
        "worker", "--nodes", "transform", "--cpu-concurrency", "2", "--create-topics",
        "--catalog-status", "none", "--shutdown-grace", "5",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        _docker(kafka_settings, "stop", "--time", "20", name, timeout=40)
        _docker(kafka_settings, "rm", "--force", name)


def test_image_runs_a_worker_against_the_local_kafka(
    worker_container: str, topics: TopicCatalog, kafka_settings: Settings
) -> None:
    invoke = topics.invoke_topic("transform", 1)
    invocations = [_invocation(n) for n in range(5)]
    with Producer(kafka_settings) as producer:
        for inv in invocations:
            producer.send(invoke, inv.run_id, inv)
    with Consumer(
        [topics.results], f"r-{uuid.uuid4().hex[:6]}", kafka_settings, catalog=topics
    ) as consumer:
        records = drain(
            consumer,
            lambda rs: len([r for r in rs if isinstance(r.value, NodeResult)]) >= 5,
            timeout=90,
        )
    results = [r.value for r in records if isinstance(r.value, NodeResult)]
    # Each attempt signalled its start (a NodeHeartbeat) before its result.
    assert len([r for r in records if isinstance(r.value, NodeHeartbeat)]) == 5
    outputs = {r.invocation_id: r.output for r in results}
    assert outputs == {i.invocation_id: {"result": n} for n, i in enumerate(invocations)}

    stopped = _docker(kafka_settings, "stop", "--time", "20", worker_container, timeout=40)
    assert stopped.returncode == 0, stopped.stderr
    state = json.loads(_docker(kafka_settings, "inspect", worker_container).stdout)[0]["State"]
    logs = _docker(kafka_settings, "logs", worker_container)
    assert state["ExitCode"] == 0, logs.stdout + logs.stderr
    assert "transform@1.0.0" in logs.stdout + logs.stderr
