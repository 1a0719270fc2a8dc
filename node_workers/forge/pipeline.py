"""Test an artifact in the sandbox, refuse it if a test fails, register it as a draft.

The shared end of both forges (OpenAPI and LLM). Helper C's copy of the signature agreed with
helper B (issue 17); the lead keeps one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from node_workers.artifacts.bundle import NodeArtifact

if TYPE_CHECKING:
    from node_workers.artifacts.tests_runner import ArtifactTestReport

__all__ = ["ForgeRefused", "ForgeResult", "ForgeTimings", "test_and_register"]


@dataclass(frozen=True)
class ForgeTimings:
    generate_s: float
    sandbox_s: float
    register_s: float
    total_s: float


@dataclass(frozen=True)
class ForgeResult:
    artifact: NodeArtifact
    digest: str
    code_uri: str
    report: ArtifactTestReport
    timings: ForgeTimings
    created: bool = True


class ForgeRefused(NonRetryableError):  # noqa: N818 (the name agreed in issue 17)
    """The forge will not register this artifact; the message says why, ``report`` is the last
    sandbox test report (None when no answer got as far as the tests)."""

    error_class = "ForgeRefused"

    def __init__(self, message: str, report: ArtifactTestReport) -> None:
        super().__init__(message)
        self.report = report


def test_and_register(
    settings: Settings, artifact: NodeArtifact, *, tenant: str = "default", generate_s: float = 0.0
) -> ForgeResult:
    """Runs the artifact's tests in the sandbox; refuses it on a failing test, else publishes
    it as a draft."""
    from node_workers.artifacts.publish import publish_artifact
    from node_workers.artifacts.tests_runner import run_artifact_tests

    started = time.perf_counter()
    report = run_artifact_tests(settings, artifact)
    if not report.passed:
        failed = [f"{t.name}: {t.message}" for t in report.tests if not t.passed]
        why = "; ".join(failed) or report.policy
        raise ForgeRefused(
            f"{artifact.node_key}: tests failed in the sandbox: {why}",
            report,
        )
    registering = time.perf_counter()
    published = publish_artifact(settings, artifact, tenant=tenant)
    done = time.perf_counter()
    timings = ForgeTimings(
        generate_s=generate_s,
        sandbox_s=report.sandbox_s,
        register_s=done - registering,
        total_s=generate_s + done - started,
    )
    return ForgeResult(artifact, published.digest, published.code_uri, report, timings)
