"""The console's node pages on the real stack: the catalog, and a node's versions, metrics over
time (uPlot) and the node x time reliability heat map, drawn from the traces of real runs that
reached ClickHouse (chdb) through the traces topic.

This module opens a chdb store (``metrics_console``): one per process, so it runs in a process
of its own under ``--dist loadfile`` like tests/integration/test_traces.py.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.integration.console_fixtures import MetricsConsole
from tests.support.waiting import eventually

INGEST_TIMEOUT_S = 60.0

GOOD = {
    "id": "metered",
    "inputs": {"n": {"type": "integer", "required": True}},
    "steps": [
        {
            "id": "double",
            "node": "transform@^1",
            "params": {"expression": "n", "data": {"n": "{{ inputs.n }}"}},
        },
        {
            "id": "label",
            "node": "transform@^1",
            "needs": ["double"],
            "params": {"expression": "'done'"},
        },
    ],
}
# abs() of a string fails when the step runs (not when the definition is checked).
BAD = {
    "id": "broken",
    "steps": [
        {
            "id": "oops",
            "node": "transform@^1",
            "params": {"expression": "abs(s)", "data": {"s": "text"}},
        }
    ],
}


def _transform_attempts(console: MetricsConsole) -> int:
    answer = httpx.get(
        f"{console.url}/v1/metrics/nodes",
        params={"node": "transform", "window": "15m"},
        headers=console.headers,
    )
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["data"]
    return sum(int(r["attempts"]) for r in rows)


def test_the_catalog_and_a_node_s_metrics_and_heat_map_from_real_traces(
    metrics_console: MetricsConsole,
) -> None:
    console = metrics_console
    harness = console.harness
    page = console.page

    # Before any run: the node page says there is no data yet.
    console.open("/nodes/transform?window=15m")
    expect(page.get_by_text("No attempts of transform in the last 15m.")).to_be_visible()
    expect(page.get_by_text("No attempts of any node in the last 15m.")).to_be_visible()

    harness.register(GOOD)
    harness.register(BAD)
    good = [harness.start("metered", {"n": n}) for n in range(3)]
    bad = harness.start("broken")
    for run_id in good:
        assert harness.wait(run_id).status == "succeeded"
    assert harness.wait(bad).status == "failed"
    expected = 2 * len(good) + 1
    eventually(
        lambda: _transform_attempts(console),
        INGEST_TIMEOUT_S,
        f"{expected} transform attempts in ClickHouse",
        until=lambda n: n >= expected,
    )

    # The harness's workers do not write the catalog: register the node's versions as an admin.
    for version, status in (("1.0.0", "production"), ("1.1.0", "staging")):
        body = {"name": "transform", "version": version, "status": status, "rollout_weight": 1.0}
        answer = httpx.post(
            f"{console.url}/v1/nodes",
            json=body,
            params={"wait_ms": 10_000},
            headers=console.headers,
        )
        assert answer.status_code == 202 and answer.json()["applied"], answer.text

    console.open("/nodes")
    catalog = page.get_by_role("table", name="Node catalog")
    row = catalog.get_by_role("row").filter(
        has=page.get_by_role("link", name="transform", exact=True)
    )
    expect(row).to_contain_text("1.0.0 production 100%")
    expect(row).to_contain_text("1.1.0 staging")
    console.screenshot("nodes-list")

    row.get_by_role("link", name="transform", exact=True).click()
    expect(page).to_have_url(re.compile(r"/ui/nodes/transform$"))
    page.get_by_label("Window").select_option("15m")
    expect(page).to_have_url(re.compile(r"/ui/nodes/transform\?window=15m$"))

    versions = page.get_by_role("table", name="Versions")
    version_row = versions.get_by_role("row").filter(has_text="1.0.0")
    expect(version_row).to_contain_text("production")
    expect(version_row).to_contain_text(str(expected))  # attempts in the window
    expect(version_row).to_contain_text("14.3%")  # 1 failure in 7 attempts

    for chart in ("Latency percentiles", "Error rate", "Cost"):
        plot = page.get_by_role("figure", name=chart).get_by_role("img")
        expect(plot).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
        expect(page.get_by_role("figure", name=chart).locator("canvas")).to_be_visible()

    grid = page.get_by_role("grid", name="Reliability heat map, 1m buckets")
    expect(grid.get_by_role("row", name="transform")).to_be_visible()
    busy = grid.get_by_role(
        "gridcell", name=re.compile(r"^transform at .*: \d+ attempts, 1 failed")
    )
    expect(busy).to_have_count(1)
    # Keyboard: the grid has one tab stop; arrows move it, and the detail line follows.
    expect(grid.locator('[role="gridcell"][tabindex="0"]')).to_have_count(1)
    busy.focus()
    detail = page.locator(".heat-detail")
    expect(detail).to_contain_text("1 failed")
    expect(busy).to_have_attribute("tabindex", "0")
    row_index, column = (busy.get_attribute("data-cell") or "").split("-")
    page.keyboard.press("ArrowLeft")
    focused = grid.locator('[role="gridcell"]:focus')
    expect(focused).to_have_attribute("data-cell", f"{row_index}-{int(column) - 1}")
    expect(focused).to_have_attribute("tabindex", "0")
    expect(busy).to_have_attribute("tabindex", "-1")
    expect(detail).to_have_text(re.compile(r"^transform at \d\d:\d\d: "))
    expect(detail).not_to_have_text(busy.get_attribute("aria-label") or "")
    busy.focus()
    console.screenshot("node-metrics")
