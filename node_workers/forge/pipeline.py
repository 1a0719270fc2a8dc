"""The forge's last two steps, shared by every generator: test in the sandbox, register a draft.

A generated artifact is registered only when all of its tests pass in the ``code.run`` sandbox
(no network there); otherwise :class:`ForgeRefused` carries the test report. The draft then goes
through the catalog lifecycle like any node version (promote, rollout, deprecate). The timings
say where the forge's wall time went, the sandbox's share included (``make bench``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from foundation.errors import NonRetryableError
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.artifacts.bundle import NodeArtifact
from node_workers.artifacts.publish import publish_artifact
from node_workers.artifacts.tests_runner import ArtifactTestReport, run_artifact_tests

__all__ = ["ForgeRefused", "ForgeResult", "ForgeTimings", "register_tested", "test_and_register"]


@dataclass(frozen=True)
class ForgeTimings:
    generate_s: float
    sandbox_s: float
    """The sandbox job's own wall time (start to report)."""
    register_s: float
    total_s: float
    """generate + the whole test step (sandbox plus its setup) + register."""


@dataclass(frozen=True)
class ForgeResult:
    artifact: NodeArtifact
    digest: str
    code_uri: str
    report: ArtifactTestReport
    timings: ForgeTimings
    created: bool = True
    """False when the catalog already had this very artifact (forging it again is a no-op)."""
    status: str = "draft"
    """The version's catalog status (a re-forged, already promoted artifact keeps its own)."""


class ForgeRefused(NonRetryableError):  # noqa: N818 -- the shared contract's name (issue 17)
    """The generated artifact failed its own tests (or met a sandbox policy): not registered."""

    error_class = "ForgeRefused"

    def __init__(self, message: str, report: ArtifactTestReport) -> None:
        super().__init__(message)
        self.report = report


def test_and_register(
    settings: Settings,
    artifact: NodeArtifact,
    *,
    tenant: str = DEFAULT_TENANT,
    generate_s: float = 0.0,
) -> ForgeResult:
    """Runs ``artifact``'s tests in the sandbox and registers it as a draft when all pass
    (blocking); :class:`ForgeRefused` with the report otherwise."""
    started = time.monotonic()
    report = run_artifact_tests(settings, artifact)
    tested = time.monotonic()
    if not report.passed or not report.tests:
        reason = report.summary() if report.tests else (report.policy or "it has no tests")
        raise ForgeRefused(
            f"Expected {artifact.node_key} to pass its tests in the sandbox, but {reason}", report
        )
    return register_tested(
        settings,
        artifact,
        report,
        tenant=tenant,
        generate_s=generate_s,
        sandbox_s=report.sandbox_s,
        before_s=generate_s + tested - started,
    )


def register_tested(
    settings: Settings,
    artifact: NodeArtifact,
    report: ArtifactTestReport,
    *,
    tenant: str,
    generate_s: float,
    sandbox_s: float,
    before_s: float,
) -> ForgeResult:
    """Registers ``artifact``, whose tests passed (``report``), as a draft and times it;
    ``before_s``: what generating and testing took. ``ArtifactImmutableError`` when the version
    exists with other code."""
    registering = time.monotonic()
    published = publish_artifact(settings, artifact, tenant=tenant)
    register_s = time.monotonic() - registering
    return ForgeResult(
        artifact=artifact,
        digest=published.digest,
        code_uri=published.code_uri,
        report=report,
        timings=ForgeTimings(
            generate_s=round(generate_s, 3),
            sandbox_s=round(sandbox_s, 3),
            register_s=round(register_s, 3),
            total_s=round(before_s + register_s, 3),
        ),
        created=published.created,
        status=published.status,
    )


# pytest collects module-level functions named test_*: this one is the forge's, not a test.
test_and_register.__test__ = False  # type: ignore[attr-defined]
