"""Run an artifact's tests in the ``code.run`` sandbox, with no network at all.

The forge refuses an artifact whose tests fail, and ``POST /v1/nodes/artifacts`` runs them before
registering: the code never runs outside the sandbox, not even its tests. The sandbox gets no
egress socket, so a test that reaches for the network fails (``EgressDenied``), and one that
writes outside /work fails with ``SandboxPolicy``; both are named in ``policy``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from foundation.settings import Settings
from node_workers.artifacts.bundle import NodeArtifact
from node_workers.artifacts.execution import ArtifactSandbox

__all__ = ["ArtifactTestReport", "TestOutcome", "report_from_answer", "run_artifact_tests"]

TESTS_TIMEOUT_S: Final = 60.0
"""Wall clock of one artifact's whole test file (each ``run`` has the manifest's own)."""


@dataclass(frozen=True, slots=True)
class TestOutcome:
    __test__ = False  # not a pytest class

    name: str
    passed: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class ArtifactTestReport:
    __test__ = False

    passed: bool
    tests: list[TestOutcome]
    sandbox_s: float
    """Wall clock of the sandbox job (start to answer), what the forge reports as its share."""
    policy: str | None = None
    """The first sandbox policy refusal a test met (``SandboxPolicy: ...``, ``EgressDenied:
    ...``), or why the sandbox gave no report at all (timeout, crash)."""
    logs: str = ""
    backend: str = ""
    failures: list[str] = field(default_factory=list)
    """``name: message`` of every failed test, for feedback and error bodies."""

    def summary(self) -> str:
        if self.passed:
            return f"{len(self.tests)} tests passed"
        failed = self.failures or [self.policy or "no report"]
        return f"{len(failed)} of {len(self.tests)} tests failed: " + "; ".join(failed)


def report_from_answer(
    answer: dict[str, Any] | None,
    *,
    sandbox_s: float,
    problem: str | None = None,
    logs: str = "",
    backend: str = "",
) -> ArtifactTestReport:
    """The report from the guest's ``report.json`` (pure); no answer fails the report."""
    if answer is None:
        return ArtifactTestReport(
            passed=False,
            tests=[],
            sandbox_s=sandbox_s,
            policy=problem or "the sandbox gave no test report",
            logs=logs,
            backend=backend,
            failures=[f"<sandbox>: {problem or 'no test report'}"],
        )
    tests = [
        TestOutcome(
            name=str(item.get("name", "?")),
            passed=item.get("passed") is True,
            message=str(item.get("message") or ""),
        )
        for item in answer.get("tests") or []
        if isinstance(item, dict)
    ]
    failures = [f"{t.name}: {t.message}" for t in tests if not t.passed]
    policy = answer.get("policy")
    return ArtifactTestReport(
        passed=not failures,
        tests=tests,
        sandbox_s=sandbox_s,
        policy=policy if isinstance(policy, str) else None,
        logs=logs,
        backend=backend,
        failures=failures,
    )


def run_artifact_tests(
    settings: Settings, artifact: NodeArtifact, *, sandbox: ArtifactSandbox | None = None
) -> ArtifactTestReport:
    """The artifact's ``test_*`` functions, run in the sandbox without network (blocking). An
    artifact without a tests file passes with no tests."""
    if artifact.tests is None:
        return ArtifactTestReport(passed=True, tests=[], sandbox_s=0.0)
    own = sandbox is None
    sandbox = sandbox or ArtifactSandbox(settings)
    started = time.monotonic()
    try:
        run = sandbox.run_job(
            artifact,
            mode="test",
            timeout_s=max(TESTS_TIMEOUT_S, artifact.manifest.limits.timeout_s),
        )
    finally:
        if own:
            sandbox.close()
    return report_from_answer(
        run.answer,
        sandbox_s=round(time.monotonic() - started, 3),
        problem=run.problem,
        logs=run.logs,
        backend=run.backend,
    )
