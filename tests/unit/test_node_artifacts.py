"""Nodes that carry their code (ADR 0070): the pure parts -- the in-sandbox guest run in
process, the egress decision, schema checks and error mapping, the catalog manifest, the
content-addressed store on a file store, the sandbox command's socket bind."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import json
import re
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from foundation.objectstore import FileBlobStore
from node_workers.artifacts.bundle import artifact_bytes, artifact_digest, artifact_key
from node_workers.artifacts.egress_proxy import decide, declared_refusal
from node_workers.artifacts.execution import GuestRun, bounded_limits
from node_workers.artifacts.guest.reflux_node import EgressDenied, NodeFailure, Response
from node_workers.artifacts.guest.reflux_node import harness as guest
from node_workers.artifacts.guest.reflux_node.testing import fake_context
from node_workers.artifacts.publish import (
    ArtifactImmutableError,
    catalog_manifest,
    check_immutable,
)
from node_workers.artifacts.store import ArtifactDigestMismatchError, ArtifactStore
from node_workers.artifacts.tests_runner import report_from_answer
from node_workers.artifacts.worker import guest_error, schema_violation, served_versions
from node_workers.egress.policy import EgressPolicy, parse_allow_entries
from node_workers.errors import NonRetryableNodeError, RetryableNodeError
from node_workers.sandbox import SandboxConfig, SandboxJob, build_command, resource_limits
from node_workers.sandbox.models import Limits
from schemas.models import NodeCatalogEntry, NodeStatus
from tests.support.artifacts import make_artifact

# -- the guest (runs in the sandbox; here in process) ------------------------------------------


def test_fake_context_answers_canned_responses_and_records_requests() -> None:
    ctx = fake_context(
        responses={
            "GET https://api.example.com/q": {"a": 1},
            "POST https://api.example.com/p": (201, "made"),
            "GET https://api.example.com/c": lambda request: Response(418, {}, b"tea"),
        },
        secrets={"TOKEN": "s3cret"},
    )
    answer = ctx.http("get", "https://api.example.com/q", params={"x": "1", "skip": None})
    assert (answer.status, answer.json(), answer.ok) == (200, {"a": 1}, True)
    made = ctx.http("POST", "https://api.example.com/p", json={"k": 2})
    assert (made.status, made.text()) == (201, "made")
    assert ctx.http("GET", "https://api.example.com/c").status == 418
    assert ctx.requests[0]["url"] == "https://api.example.com/q?x=1"
    assert ctx.requests[1]["body"] == b'{"k": 2}'
    assert ctx.requests[1]["headers"] == {"Content-Type": "application/json"}
    assert ctx.secret("TOKEN") == "s3cret"
    with pytest.raises(NodeFailure, match=re.escape("'OTHER' to be declared in manifest.secrets")):
        ctx.secret("OTHER")
    with pytest.raises(
        AssertionError, match=re.escape("no response for 'GET https://elsewhere.example/'")
    ):
        ctx.http("GET", "https://elsewhere.example/")


def test_a_context_without_egress_refuses_every_request() -> None:
    from node_workers.artifacts.guest.reflux_node import Context

    with pytest.raises(EgressDenied, match="declares no egress"):
        Context(egress_socket=None).http("GET", "https://api.example.com/")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NodeFailure("quota", error_class="QuotaExceeded", retryable=True), "QuotaExceeded"),
        (EgressDenied("host x is not in the node's declared egress []"), "EgressDenied"),
        (OSError(errno.EROFS, "Read-only file system", "/etc/passwd"), "SandboxPolicy"),
        (PermissionError(errno.EACCES, "Permission denied", "/usr/x"), "SandboxPolicy"),
        (socket.gaierror(-3, "Temporary failure in name resolution"), "EgressDenied"),
        (OSError(errno.EROFS, "Read-only file system", "/work/ok"), "NodeCodeError"),
        (KeyError("name"), "NodeCodeError"),
    ],
)
def test_guest_errors_are_classified(exc: BaseException, expected: str) -> None:
    answer = guest.classify(exc, src="/work/src", work="/work")
    assert answer["ok"] is False
    assert answer["error_class"] == expected
    if expected == "SandboxPolicy":
        assert answer["message"].startswith(f"writing {exc.filename} was refused")  # type: ignore[attr-defined]
        assert answer["retryable"] is False
    if isinstance(exc, NodeFailure):
        assert answer["retryable"] is exc.retryable


def test_a_wrapped_write_refusal_is_still_a_policy_refusal() -> None:
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/etc/x")
        except OSError as inner:
            raise RuntimeError("could not save") from inner
    except RuntimeError as exc:
        assert guest.classify(exc)["error_class"] == "SandboxPolicy"


def _layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> Path:
    src, inputs, out = tmp_path / "src", tmp_path / "in", tmp_path / "out"
    for folder in (src, inputs, out):
        folder.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    for name, value in {
        "REFLUX_SRC": src,
        "REFLUX_IN": inputs,
        "REFLUX_OUT": out,
        "REFLUX_WORK": tmp_path,
        "REFLUX_EGRESS_SOCKET": tmp_path / "none.sock",
    }.items():
        monkeypatch.setenv(name, str(value))
    module = f"node_{tmp_path.name.replace('-', '_')}"
    monkeypatch.setenv("REFLUX_NODE_ENTRY", f"{module}.py")
    (src / f"{module}.py").write_text(files.get("node.py", ""))
    return inputs


def test_the_harness_runs_the_entry_and_reports_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "def run(input, ctx):\n    return {'n': input['n'] + 1, 'key': ctx.secret('KEY')}\n"
    inputs = _layout(tmp_path, monkeypatch, {"node.py": code})
    (inputs / "input.json").write_text(json.dumps({"n": 41}))
    (inputs / "secrets.json").write_text(json.dumps({"KEY": "k"}))
    assert guest.main(["run"]) == 0
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == {
        "ok": True,
        "output": {"n": 42, "key": "k"},
    }


def test_the_harness_reports_a_crash_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = _layout(tmp_path, monkeypatch, {"node.py": "def run(input, ctx):\n    return 1 / 0\n"})
    (inputs / "input.json").write_text("{}")
    answer = guest.run_node()
    assert answer["error_class"] == "NodeCodeError"
    assert answer["message"].startswith("ZeroDivisionError: division by zero (node_")
    assert "line 2, in run)" in answer["message"]


def test_the_harness_runs_every_test_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"test_{tmp_path.name.replace('-', '_')}.py"
    tests = (
        "def test_ok():\n    assert True\n\n"
        "def test_fails():\n    assert 1 == 2, 'nope'\n\n"
        "def test_writes():\n    raise OSError(13, 'Permission denied', '/etc/x')\n\n"
        "def helper():\n    raise AssertionError('not a test')\n"
    )
    _layout(tmp_path, monkeypatch, {name: tests})
    monkeypatch.setenv("REFLUX_NODE_TESTS", name)
    report = guest.run_tests()
    outcomes = {t["name"]: (t["passed"], t["message"]) for t in report["tests"]}
    assert set(outcomes) == {"test_ok", "test_fails", "test_writes"}
    assert outcomes["test_ok"] == (True, "")
    # (pytest rewrites the asserts of a test_* module it imports: the message grows here)
    assert outcomes["test_fails"][1].startswith("AssertionError: nope")
    assert "line 5, in test_fails)" in outcomes["test_fails"][1]
    assert outcomes["test_writes"][1].startswith("SandboxPolicy: writing /etc/x was refused")
    assert report["policy"] == outcomes["test_writes"][1]


def test_a_test_report_fails_without_an_answer_or_with_a_failed_test() -> None:
    missing = report_from_answer(None, sandbox_s=1.0, problem="timed out")
    assert (missing.passed, missing.policy, missing.failures) == (
        False,
        "timed out",
        ["<sandbox>: timed out"],
    )
    answer = {
        "tests": [
            {"name": "test_a", "passed": True},
            {"name": "test_b", "passed": False, "message": "boom"},
        ]
    }
    report = report_from_answer(answer, sandbox_s=0.5)
    assert not report.passed
    assert report.summary() == "1 of 2 tests failed: test_b: boom"
    assert report_from_answer({"tests": answer["tests"][:1]}, sandbox_s=0.1).passed


# -- the egress proxy's decision ----------------------------------------------------------------


def _ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def test_a_host_outside_the_declared_egress_is_refused_by_name() -> None:
    declared = parse_allow_entries(["api.example.com:443", "*.corp.example"])
    assert declared_refusal(declared, "api.example.com", 443, []) is None
    assert declared_refusal(declared, "x.corp.example", 80, []) is None
    assert declared_refusal(declared, "evil.example", 443, []) == (
        "host evil.example is not in the node's declared egress "
        "[api.example.com:443, *.corp.example]"
    )
    assert declared_refusal(declared, "api.example.com", 8443, []) == (
        "host api.example.com:8443 is not in the node's declared egress "
        "[api.example.com:443, *.corp.example]"
    )
    assert "declares no egress" in (declared_refusal((), "a.example", 443, []) or "")


def test_the_platform_policy_applies_to_declared_hosts_too() -> None:
    declared = parse_allow_entries(["api.example.com", "localhost:8080"])
    policy = EgressPolicy()
    public = decide(declared, policy, "api.example.com", 443, [_ip("93.184.216.34")], node="n")
    assert public.address == _ip("93.184.216.34")
    loopback = decide(declared, policy, "localhost", 8080, [_ip("127.0.0.1")], node="acme.x")
    assert loopback.address is None
    assert loopback.reason.startswith("acme.x: platform egress policy: Egress to localhost:8080")
    assert "'loopback'" in loopback.reason
    opened = EgressPolicy(allow=parse_allow_entries(["127.0.0.1:8080"]))
    assert decide(declared, opened, "localhost", 8080, [_ip("127.0.0.1")], node="n").address
    undeclared = decide(declared, opened, "evil.example", 443, [_ip("93.184.216.34")], node="n")
    assert (undeclared.address, undeclared.reason) == (
        None,
        "n: host evil.example is not in the node's declared egress [api.example.com, "
        "localhost:8080]",
    )
    mixed = decide(
        declared, policy, "api.example.com", 443, [_ip("10.0.0.1"), _ip("93.184.216.34")], node="n"
    )
    assert mixed.address == _ip("93.184.216.34")  # the private answer is skipped


# -- the worker's checks ------------------------------------------------------------------------


def test_schema_violations_name_the_field_path() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
        "required": ["items"],
    }
    assert schema_violation(schema, {"items": [1, 2]}, "params") is None
    assert schema_violation(schema, {"items": [1, "x"]}, "params") == (
        "params.items[1]: 'x' is not of type 'integer'"
    )
    assert schema_violation(schema, {}, "output") == "output: 'items' is a required property"


def _run(answer: dict[str, Any] | None, **changes: Any) -> GuestRun:
    base = GuestRun(answer, "line 1\nline 2\n", 10.0, 0, False, "bubblewrap")
    return dataclasses.replace(base, **changes)


def test_guest_answers_map_to_the_attempts_error() -> None:
    assert guest_error(_run({"ok": True, "output": {}}), "n", 5) is None
    failure = guest_error(
        _run({"ok": False, "error_class": "Quota", "message": "later", "retryable": True}), "n", 5
    )
    assert failure is not None
    assert (failure.error_class, failure.retryable, str(failure)) == ("Quota", True, "n: later")
    timeout = guest_error(_run(None, timed_out=True, problem="too slow"), "n", 5)
    assert timeout is not None and (timeout.error_class, timeout.retryable) == ("CodeTimeout", True)
    crash = guest_error(_run(None, problem="exited with 137 without an answer"), "n", 5)
    assert crash is not None and crash.error_class == "NodeCodeError"
    assert str(crash).endswith("logs end with:\nline 1\nline 2")


def _entry(version: str, status: NodeStatus, manifest: dict[str, Any]) -> NodeCatalogEntry:
    return NodeCatalogEntry(
        name="acme.x", version=version, status=status, rollout_weight=0.0, manifest=manifest
    )


def test_the_worker_serves_artifacts_that_are_not_deprecated() -> None:
    artifact = {"artifact": {"digest": "sha256:" + "a" * 64}}
    entries = {
        "acme.x@1.0.0": _entry("1.0.0", NodeStatus.DRAFT, artifact),
        "acme.x@1.1.0": _entry("1.1.0", NodeStatus.PRODUCTION, artifact),
        "acme.x@0.9.0": _entry("0.9.0", NodeStatus.DEPRECATED, artifact),
        "acme.x@2.0.0": _entry("2.0.0", NodeStatus.PRODUCTION, {"description": "compiled"}),
    }
    assert sorted(served_versions(entries)) == ["acme.x@1.0.0", "acme.x@1.1.0"]


# -- publishing and storing ---------------------------------------------------------------------


def test_the_catalog_manifest_is_the_node_manifest_plus_the_artifact() -> None:
    artifact = make_artifact("acme.quote", "1.2.0", egress=("api.example.com",), secrets=("K",))
    manifest = catalog_manifest(artifact)
    digest = artifact_digest(artifact)
    assert manifest["artifact"] == {"digest": digest, "format": "reflux.node-artifact/1"}
    for key in ("name", "version", "description", "side_effects", "input_schema", "output_schema"):
        assert manifest[key] == getattr(artifact.manifest, key)
    assert (manifest["egress"], manifest["secrets"], manifest["cacheable"]) == (
        ["api.example.com"],
        ["K"],
        False,
    )
    assert manifest["limits"] == {"cpu": 0.5, "memory_mb": 256, "timeout_s": 10.0}


def test_a_registered_version_cannot_change_its_code() -> None:
    digest = "sha256:" + "b" * 64
    assert check_immutable("acme.x@1.0.0", {"artifact": {"digest": digest}}, digest)
    with pytest.raises(ArtifactImmutableError, match="supersede with a new version"):
        check_immutable("acme.x@1.0.0", {"artifact": {"digest": "sha256:" + "c" * 64}}, digest)
    with pytest.raises(ArtifactImmutableError, match="a compiled node"):
        check_immutable("acme.x@1.0.0", {"description": "built in"}, digest)


def test_the_store_is_content_addressed_and_verifies_on_get(tmp_path: Path) -> None:
    store = ArtifactStore(FileBlobStore(tmp_path), f"file://{tmp_path.resolve()}/")
    artifact = make_artifact()
    stored = store.put(artifact)
    assert stored.created and stored.digest == artifact_digest(artifact)
    assert not store.put(artifact).created
    assert store.get(stored.digest) == artifact
    path = tmp_path / artifact_key(stored.digest)
    assert path.read_bytes() == artifact_bytes(artifact)
    path.write_bytes(artifact_bytes(artifact).replace(b"hello", b"pwned"))
    with pytest.raises(ArtifactDigestMismatchError, match="changed after it was stored"):
        store.get(stored.digest)
    with pytest.raises(ArtifactDigestMismatchError, match="refusing to overwrite"):
        store.put(artifact)


# -- the sandbox job ----------------------------------------------------------------------------


def test_manifest_limits_are_bounded_by_the_workers_maxima() -> None:
    artifact = make_artifact(limits={"cpu": 2, "memory_mb": 2048, "timeout_s": 300})
    config = SandboxConfig(max_cpu=1.0, max_mem_mb=512, max_timeout_sec=30)
    limits = bounded_limits(artifact.manifest.limits, config, timeout_s=300)
    assert (limits.cpu, limits.mem_mb, limits.timeout_sec, limits.network) == (
        1.0,
        512,
        30,
        "off",
    )


def test_the_egress_socket_is_bound_into_the_bubblewrap_sandbox(tmp_path: Path) -> None:
    job = SandboxJob(
        lang="python",
        entry=".reflux/boot.py",
        network="off",
        limits=resource_limits(Limits(), SandboxConfig()),
        host_work=tmp_path / "work",
        host_inputs=tmp_path / "in",
        binds=((tmp_path / "egress.sock", "/run/reflux/egress.sock"),),
    )
    command = build_command(job, SandboxConfig(), as_root=False, root_entries=[])
    binds = [(command[i + 1], command[i + 2]) for i, a in enumerate(command) if a == "--bind"]
    assert (str(tmp_path / "egress.sock"), "/run/reflux/egress.sock") in binds
    assert "--share-net" not in command


class _Service:
    """Stands in for the sandbox: only the version lookup is under test here."""

    async def run(
        self, entry: NodeCatalogEntry, params: Any, ctx: Any, *, workflow_version: int | None
    ) -> Any:
        return {"version": entry.version, "workflow_version": workflow_version}


def test_an_invoked_version_the_worker_has_not_read_yet_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from node_workers.artifacts import worker
    from node_workers.node import NodeContext

    monkeypatch.setattr(worker, "_CATALOG_WAIT_S", 0.5)
    service = cast(worker.ArtifactService, _Service())
    major = worker.ArtifactMajorNode("acme.x", 1, service)
    entry = _entry("1.1.0", NodeStatus.DRAFT, {"artifact": {"digest": "sha256:" + "d" * 64}})
    ctx = NodeContext(invocation_id="i", run_id="r", step_id="s", attempt=1)

    def node(version: str) -> worker.ArtifactVersionNode:
        return worker.ArtifactVersionNode(
            "acme.x", version, None, service, workflow_version=3, lookup=major.entry_of
        )

    looked_up: list[str] = []

    def late_lookup(version: str) -> NodeCatalogEntry | None:
        looked_up.append(version)
        if len(looked_up) == 3:  # the catalog follower caught up after two looks
            major.update({"1.1.0": entry})
        return major.entry_of(version)

    late = worker.ArtifactVersionNode(
        "acme.x", "1.1.0", None, service, workflow_version=3, lookup=late_lookup
    )
    assert asyncio.run(late.execute(worker.ArtifactParams(), ctx)).root == {
        "version": "1.1.0",
        "workflow_version": 3,
    }
    assert looked_up == ["1.1.0"] * 3
    with pytest.raises(RetryableNodeError) as unknown:
        asyncio.run(node("1.2.0").execute(worker.ArtifactParams(), ctx))
    assert unknown.value.error_class == "ArtifactNotServed"


def test_a_version_of_another_tenant_is_refused_by_the_worker_too() -> None:
    from node_workers.artifacts import worker
    from node_workers.node import NodeContext

    service = cast(worker.ArtifactService, _Service())
    digest = {"artifact": {"digest": "sha256:" + "e" * 64}}
    acme = _entry("1.0.0", NodeStatus.DRAFT, digest).model_copy(update={"tenant": "acme"})
    platform = _entry("1.0.0", NodeStatus.DRAFT, digest)

    def execute(entry: NodeCatalogEntry, tenant: str) -> Any:
        node = worker.ArtifactVersionNode("acme.x", "1.0.0", entry, service)
        ctx = NodeContext(invocation_id="i", run_id="r", step_id="s", attempt=1, tenant=tenant)
        return asyncio.run(node.execute(worker.ArtifactParams(), ctx)).root

    assert execute(acme, "acme")["version"] == "1.0.0"
    assert execute(platform, "beta")["version"] == "1.0.0"
    with pytest.raises(NonRetryableNodeError) as refused:
        execute(acme, "beta")
    assert refused.value.error_class == "NodeVersionUnavailable"
    assert "belongs to tenant 'acme'" in str(refused.value)
