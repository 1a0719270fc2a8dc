"""Rollout: which version a run gets (pure), and how the scheduler's decide uses the answer."""

from __future__ import annotations

import math
import uuid
from collections import Counter

import pytest

from processors.node_catalog import (
    CatalogState,
    CatalogVersion,
    NodeVersionUnavailableError,
    choose_version,
    rollout_point,
    shares,
)
from processors.scheduler import DecisionContext, RunStatus, StepStatus
from schemas.models import (
    NodeCatalogEntry,
    NodeStatus,
    RunFailed,
    StepDispatched,
    StepFailed,
)
from schemas.run_log import schedules_step
from tests.support.scheduler_simulation import Simulation

P, S, D, X = NodeStatus.PRODUCTION, NodeStatus.STAGING, NodeStatus.DRAFT, NodeStatus.DEPRECATED


def v(version: str, status: NodeStatus = P, weight: float = 1.0) -> CatalogVersion:
    return CatalogVersion(version, status, weight)


def run_ids(n: int, salt: str = "") -> list[str]:
    # Deterministic ids (the test cannot flake) that look like the real ones (uuid4 text).
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"reflux-run-{salt}{i}")) for i in range(n)]


def binomial_bounds(n: int, p: float, sigmas: float = 3.0) -> tuple[float, float]:
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


# -- the point -----------------------------------------------------------------------------------


def test_rollout_point_is_stable_and_in_range() -> None:
    points = [rollout_point("echo", r) for r in run_ids(2000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert rollout_point("echo", "run-1") == rollout_point("echo", "run-1")
    # Per node: one run may get a new version of one node and the old version of another.
    assert rollout_point("echo", "run-1") != rollout_point("http.request", "run-1")
    # Roughly uniform: each decile holds 10 % +- 3 sigma of 2000 points.
    low, high = binomial_bounds(2000, 0.1)
    deciles = Counter(int(p * 10) for p in points)
    assert all(low <= deciles[d] <= high for d in range(10)), deciles


# -- ranges and weights --------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.1, 0.5, 0.9])
def test_newer_major_gets_its_weight_of_runs(weight: float) -> None:
    catalog = [v("1.0.0", weight=1.0), v("2.0.0", weight=weight)]
    n = 1000
    chosen = Counter(choose_version("echo", "*", catalog, r) for r in run_ids(n))
    low, high = binomial_bounds(n, weight)
    assert low <= chosen["2.0.0"] <= high, (weight, chosen)
    assert chosen["1.0.0"] + chosen["2.0.0"] == n


def test_weights_claim_shares_newest_first() -> None:
    catalog = [v("1.0.0"), v("1.1.0", weight=0.5), v("1.2.0", weight=0.2)]
    assert shares("^1", catalog) == [("1.2.0", 0.2), ("1.1.0", 0.4), ("1.0.0", pytest.approx(0.4))]
    n = 3000
    chosen = Counter(choose_version("echo", "^1", catalog, r) for r in run_ids(n))
    for version, p in [("1.2.0", 0.2), ("1.1.0", 0.4), ("1.0.0", 0.4)]:
        low, high = binomial_bounds(n, p)
        assert low <= chosen[version] <= high, chosen


def test_weight_one_moves_everything_and_zero_keeps_a_version_dark() -> None:
    ids = run_ids(300)
    full = [v("1.0.0"), v("2.0.0", weight=1.0)]
    dark = [v("1.0.0"), v("2.0.0", weight=0.0)]
    assert {choose_version("echo", ">=1", full, r) for r in ids} == {"2.0.0"}
    assert {choose_version("echo", ">=1", dark, r) for r in ids} == {"1.0.0"}
    # The only allowed version takes every run whatever its weight (it is the baseline).
    assert {choose_version("echo", "^2", dark, r) for r in ids} == {"2.0.0"}


def test_the_same_run_keeps_its_version_while_weights_stay() -> None:
    catalog = [v("1.0.0"), v("2.0.0", weight=0.3)]
    for run_id in run_ids(50):
        first = choose_version("echo", "*", catalog, run_id)
        assert all(choose_version("echo", "*", catalog, run_id) == first for _ in range(3))


def test_raising_the_weight_only_moves_runs_to_the_new_version() -> None:
    """A run on v2 at 10 % stays on v2 at 50 %: the ramp never flips runs back and forth."""
    ids = run_ids(1000)
    at10 = {
        r
        for r in ids
        if choose_version("echo", "*", [v("1.0.0"), v("2.0.0", weight=0.1)], r) == "2.0.0"
    }
    at50 = {
        r
        for r in ids
        if choose_version("echo", "*", [v("1.0.0"), v("2.0.0", weight=0.5)], r) == "2.0.0"
    }
    assert at10 < at50


def test_caret_and_pinned_constraints_keep_their_version_at_any_weight() -> None:
    catalog = [v("1.0.0"), v("1.0.1", weight=0.0), v("2.0.0", weight=1.0)]
    ids = run_ids(200)
    assert {choose_version("echo", "^1", catalog, r) for r in ids} == {"1.0.0"}
    assert {choose_version("echo", "~1.0", catalog, r) for r in ids} == {"1.0.0"}
    assert {choose_version("echo", "1.0.1", catalog, r) for r in ids} == {"1.0.1"}
    assert {choose_version("echo", "=1.0.0", catalog, r) for r in ids} == {"1.0.0"}


def test_ranges_choose_only_production_versions() -> None:
    catalog = [v("1.0.0"), v("1.1.0", S), v("1.2.0", D), v("1.3.0", X), v("1.4.0-rc.1", P)]
    assert {choose_version("echo", "^1", catalog, r) for r in run_ids(200)} == {"1.0.0"}


def test_an_exact_pin_may_choose_draft_and_staging() -> None:
    catalog = [v("1.0.0"), v("2.0.0-beta.1", D, 0.0), v("2.0.0", S, 0.0)]
    assert choose_version("echo", "2.0.0-beta.1", catalog, "r") == "2.0.0-beta.1"
    assert choose_version("echo", "2.0.0", catalog, "r") == "2.0.0"


# -- refusals ------------------------------------------------------------------------------------


def test_nothing_matching_names_the_constraint_and_the_catalog() -> None:
    catalog = [v("1.0.0"), v("2.0.0", X)]
    with pytest.raises(NodeVersionUnavailableError) as caught:
        choose_version("http.request", "^3", catalog, "r")
    assert str(caught.value) == (
        "Expected a production version of http.request matching ^3, but the catalog has "
        "1.0.0 (production), 2.0.0 (deprecated)"
    )
    assert caught.value.error_class == "NodeVersionUnavailable"
    assert caught.value.retryable is False


def test_a_deprecated_pin_refuses_new_runs() -> None:
    catalog = [v("1.0.0", X), v("2.0.0")]
    with pytest.raises(
        NodeVersionUnavailableError,
        match=r"echo@1\.0\.0 to accept new runs, "
        r"but it is deprecated \(the catalog has 1\.0\.0 \(deprecated\), "
        r"2\.0\.0 \(production\)\)",
    ):
        choose_version("echo", "1.0.0", catalog, "r")
    # A range that only matches the deprecated version is refused too.
    with pytest.raises(NodeVersionUnavailableError, match=r"matching \^1"):
        choose_version("echo", "^1", catalog, "r")


def test_an_unknown_pinned_version_is_refused() -> None:
    with pytest.raises(NodeVersionUnavailableError, match=r"echo@1\.5\.0 in the node catalog"):
        choose_version("echo", "1.5.0", [v("1.0.0")], "r")


def test_unparseable_catalog_versions_are_ignored() -> None:
    assert choose_version("echo", "*", [v("junk"), v("1.0.0")], "r") == "1.0.0"


# -- the catalog state -------------------------------------------------------------------------


def entry(version: str, status: NodeStatus = P, weight: float = 1.0) -> NodeCatalogEntry:
    return NodeCatalogEntry(
        name="echo", version=version, status=status, rollout_weight=weight, manifest={}
    )


def test_state_keeps_the_last_entry_per_version_and_knows_unknown_nodes() -> None:
    state = CatalogState([entry("1.0.0"), entry("2.0.0", D, 0.0), entry("2.0.0", P, 1.0)])
    assert sorted(state.versions("echo")) == ["1.0.0", "2.0.0"]
    assert state.entry("echo", "2.0.0") is not None
    assert state.choose("echo", "*", "r") == "2.0.0"
    assert state.choose("http.request", "^1", "r") is None  # unknown: the caller falls back
    state.apply(entry("2.0.0", X, 0.0))
    assert state.choose("echo", "*", "r") == "1.0.0"


# -- decide uses the resolver ------------------------------------------------------------------

ECHO = """
id: echoes
steps:
  - {id: a, node: "echo@%s", params: {text: hi}}
"""


class CatalogSimulation(Simulation):
    """The in-memory scheduler with a catalog-backed resolver (as the runtime wires it)."""

    def __init__(self, constraint: str, state: CatalogState, run_id: str = "run-1") -> None:
        super().__init__(ECHO % constraint, run_id=run_id)
        self.state_catalog = state

    def resolve(self, name: str, constraint: str, run_id: str) -> str:
        chosen = self.state_catalog.choose(name, constraint, run_id)
        return chosen if chosen is not None else constraint

    def context(self) -> DecisionContext:
        ctx = super().context()
        return DecisionContext(
            now=ctx.now,
            new_id=ctx.new_id,
            random=ctx.random,
            resolve_node_version=self.resolve,
            lookup_workflow=ctx.lookup_workflow,
        )


def test_the_chosen_version_is_dispatched_on_its_major_topic() -> None:
    state = CatalogState([entry("1.0.0"), entry("2.0.0", weight=1.0)])
    sim = CatalogSimulation("*", state)
    sim.start()
    dispatched = [e for e in sim.log if isinstance(e, StepDispatched)]
    assert [(e.node_version, e.invoke_topic) for e in dispatched] == [
        ("2.0.0", "reflux.invoke.echo.v2")
    ]
    scheduled = [e for e in sim.log if schedules_step(e)]
    assert scheduled[0].step.node_version == "2.0.0"
    assert sim.sent[0].step.node_version == "2.0.0"


def test_a_refused_version_fails_the_step_and_the_run_for_good() -> None:
    state = CatalogState([entry("1.0.0", X, 0.0), entry("2.0.0")])
    sim = CatalogSimulation("1.0.0", state)
    sim.start()
    failed = [e for e in sim.log if isinstance(e, StepFailed)]
    assert len(failed) == 1
    error = failed[0].error
    assert error.error_class == "NodeVersionUnavailable"
    assert error.retryable is False
    assert "echo@1.0.0 to accept new runs, but it is deprecated" in error.message
    assert not [e for e in sim.log if isinstance(e, StepDispatched)]
    run_failed = [e for e in sim.log if isinstance(e, RunFailed)]
    assert run_failed and run_failed[0].error == error
    assert sim.run.status is RunStatus.FAILED
    assert sim.run.steps["a"].status is StepStatus.FAILED


def test_other_resolver_errors_are_not_swallowed() -> None:
    """Only refusals (non-retryable) fail the step; a broken resolver crashes the batch so the
    runtime aborts and retries instead of failing runs for an outage."""

    class Broken(CatalogSimulation):
        def resolve(self, name: str, constraint: str, run_id: str) -> str:
            raise ConnectionError("broker away")

    sim = Broken("^1", CatalogState())
    with pytest.raises(ConnectionError):
        sim.start()
