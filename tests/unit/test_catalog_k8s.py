"""The Kubernetes scaling mode: every manifest in infra/k8s parses and is consistent with the
code (node filters select real nodes, KEDA watches the right consumer groups and topics, the
ConfigMap sets real settings). kubectl is not available here, so this is a structural check,
not a server-side validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from foundation.settings import Settings
from node_workers.registry import default_registry
from streams.topics import TopicCatalog

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
NAMESPACE = "reflux"


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d.get("kind") == kind}


def settings() -> dict[str, str]:
    return dict(of_kind("ConfigMap")["reflux-settings"]["data"])


def topic_catalog() -> TopicCatalog:
    data = settings()
    return TopicCatalog.from_settings(
        Settings(
            topic_prefix=data["REFLUX_TOPIC_PREFIX"],
            default_partitions=int(data["REFLUX_DEFAULT_PARTITIONS"]),
        )
    )


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_every_document_is_a_named_resource_in_the_namespace() -> None:
    docs = documents()
    assert len(docs) >= 15
    for name, doc in docs:
        if name == "kustomization.yaml":
            continue
        assert {"apiVersion", "kind", "metadata"} <= set(doc), name
        assert doc["metadata"].get("name"), name
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, (name, doc["kind"])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_configmap_sets_only_real_settings() -> None:
    known = {f"REFLUX_{name.upper()}" for name in Settings.model_fields}
    data = settings()
    assert set(data) <= known, set(data) - known
    assert {"REFLUX_KAFKA_BOOTSTRAP", "REFLUX_TOPIC_PREFIX"} <= set(data)
    assert all(isinstance(v, str) for v in data.values())  # env values must be strings
    # Credentials come from the Secret reflux-credentials, never from the ConfigMap (ADR 0044).
    assert not {"REFLUX_POSTGRES_DSN", "REFLUX_S3_ACCESS_KEY", "REFLUX_S3_SECRET_KEY"} & set(data)


def test_components_run_the_one_binary_with_the_settings() -> None:
    workloads = {**of_kind("Deployment"), **of_kind("StatefulSet")}
    commands = {name: container(doc)["args"][0] for name, doc in workloads.items()}
    assert sorted(set(commands.values())) == [
        "api",
        "historian",
        "mutation-processor",
        "projector",
        "replay-runner",
        "scheduler",
        "schedules",
        "trigger-router",
        "worker",
    ]
    for name, doc in workloads.items():
        spec = doc["spec"]
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        ), name
        refs = [next(iter(e.items())) for e in container(doc).get("envFrom", [])]
        assert refs == [
            ("configMapRef", {"name": "reflux-settings"}),
            ("secretRef", {"name": "reflux-credentials"}),
        ], name
        assert container(doc)["image"], name


def test_the_scheduler_is_a_statefulset_with_its_ordinal_as_instance_id() -> None:
    scheduler = of_kind("StatefulSet")["reflux-scheduler"]
    assert scheduler["spec"]["serviceName"] in of_kind("Service")
    env = {e["name"]: e for e in container(scheduler)["env"]}
    field = env["REFLUX_SCHEDULER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']"


def test_the_api_service_targets_the_api_pods() -> None:
    service = of_kind("Service")["reflux-api"]
    api = of_kind("Deployment")["reflux-api"]
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["name"] for p in container(api)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def worker_groups() -> dict[str, str]:
    """Deployment name -> its --nodes filter."""
    out: dict[str, str] = {}
    for name, doc in of_kind("Deployment").items():
        args = container(doc)["args"]
        if args[0] == "worker":
            out[name] = args[args.index("--nodes") + 1]
    return out


def test_worker_groups_are_the_seed_groups_and_cover_every_node() -> None:
    groups = worker_groups()
    assert sorted(groups.values()) == sorted(
        ["http", "transform,condition", "database,email,openai,ai", "code", "webhook"]
    )
    served: list[str] = []
    for node_filter in groups.values():
        served.extend(default_registry().select(node_filter).names())  # raises on a typo
    assert sorted(served) == default_registry().names()  # every node exactly once


# webhook.trigger waits for inbound calls: its lag is not load, so that group is not scaled on it.
LAG_SCALED = sorted(d for d, nodes in worker_groups().items() if nodes != "webhook")


def test_the_waiting_webhook_group_is_not_scaled_on_lag() -> None:
    assert "reflux-workers-webhook" not in of_kind("ScaledObject")


@pytest.mark.parametrize("deployment", LAG_SCALED)
def test_keda_scales_each_group_on_its_node_majors_lag(deployment: str) -> None:
    scaled = of_kind("ScaledObject")[deployment]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment)
    catalog = topic_catalog()
    nodes = default_registry().select(worker_groups()[deployment])
    expected = {
        (catalog.worker_group(n.name, n.major), catalog.invoke_topic(n.name, n.major).topic)
        for n in nodes
    }
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "kafka" for t in triggers)
    got = {(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers}
    assert got == expected
    bootstrap = settings()["REFLUX_KAFKA_BOOTSTRAP"]
    for trigger in triggers:
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        assert trigger["metadata"]["bootstrapServers"] == bootstrap
    partitions = int(settings()["REFLUX_DEFAULT_PARTITIONS"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= partitions  # more members than partitions idle


def test_keda_scales_the_scheduler_on_its_inputs() -> None:
    scaled = of_kind("ScaledObject")["reflux-scheduler"]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    catalog = topic_catalog()
    got = {
        (t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in scaled["spec"]["triggers"]
    }
    group = f"{catalog.prefix}.scheduler"
    assert got == {(group, catalog.commands.topic), (group, catalog.results.topic)}


def test_every_pod_is_restarted_and_every_component_has_a_liveness_probe() -> None:
    """Supervision of separate processes: the kubelet restarts a container that exits
    (restartPolicy) or hangs (liveness probe: /healthz for the API, the heartbeat file for the
    components without an HTTP port)."""
    from foundation.liveness import BEAT_EVERY_S

    heartbeat = settings()["REFLUX_LIVENESS_FILE"]
    assert heartbeat.startswith("/")
    workloads = {**of_kind("Deployment"), **of_kind("StatefulSet")}
    assert len(workloads) >= 8
    for name, doc in workloads.items():
        assert doc["spec"]["template"]["spec"]["restartPolicy"] == "Always", name
        probe = container(doc)["livenessProbe"]
        if container(doc)["args"][0] == "api":
            assert probe["httpGet"]["path"] == "/healthz", name
            continue
        command = probe["exec"]["command"]
        assert command[:3] == ["python", "-m", "foundation.liveness"], name
        max_age = float(command[command.index("--max-age") + 1])
        # Several missed beats before the file counts as stale, and time to start first.
        assert max_age >= 10 * BEAT_EVERY_S, name
        assert probe["initialDelaySeconds"] >= 30, name
        assert probe["failureThreshold"] >= 2, name


def test_scheduler_workers_and_projector_expose_metrics_to_prometheus() -> None:
    """Each serves /metrics on the port its annotations tell Prometheus (ADR 0060)."""
    workloads = {**of_kind("Deployment"), **of_kind("StatefulSet")}
    served = {"scheduler", "worker", "projector"}
    found = set()
    for name, doc in workloads.items():
        args = container(doc)["args"]
        if args[0] not in served:
            continue
        found.add(args[0])
        port = args[args.index("--metrics-port") + 1]
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == port, name
        assert annotations["prometheus.io/path"] == "/metrics", name
        ports = {p["name"]: p["containerPort"] for p in container(doc)["ports"]}
        assert ports["metrics"] == int(port), name
    assert found == served
