"""Test files that xdist must run in one process, one after the other (see tests/conftest.py).

A file-to-group table rather than ``xdist_group`` marks: xdist 3.8 tags a marked test by
rewriting ``item._nodeid``, which pytest 9 no longer reads, so marks group nothing here.
"""

from __future__ import annotations

BROKER_FAULTS = "broker-faults"
"""Tests that kill or restart brokers under load and count the work that failed. Run side by
side on two cores, each slowed the other's broker restart to ~50 s and pushed step timeouts past
what the odds allow (CI, 2026-12-07)."""

SANDBOXES = "sandboxes"
"""Tests that run sandboxes as the default sandbox uid. ``test_code_run`` counts that uid's
processes (the fork bomb's peak, nothing left behind), so another file's sandbox running beside
it counted too (69 against a bound of 66, seen once)."""

GROUP_OF_FILE: dict[str, str] = {
    "tests/integration/test_chaos.py": BROKER_FAULTS,
    "tests/integration/test_cluster_faults.py": BROKER_FAULTS,
    "tests/integration/test_scheduler_instances.py": BROKER_FAULTS,
    "tests/integration/test_code_run.py": SANDBOXES,
    "tests/integration/test_node_artifacts.py": SANDBOXES,
    "tests/integration/test_artifact_worker.py": SANDBOXES,
    "tests/integration/test_forge_openapi.py": SANDBOXES,
    "tests/integration/test_forge_llm.py": SANDBOXES,
    "tests/integration/test_replay_artifact_pins.py": SANDBOXES,
}


def scope_of(nodeid: str) -> str:
    """The unit of work a test belongs to: its file's group, else its file."""
    path = nodeid.split("::", 1)[0]
    return GROUP_OF_FILE.get(path, path)
