"""The console's workflow pages on the real stack: the list, a workflow's versions and graph, the
visual diff between two versions, and the YAML editor, which shows the API's validation errors at
their field (a Monaco marker on the line and the list under the editor) and saves a new version.

Workflows are arranged through /v1 (httpx, the console's own key); every wait is on what the page
shows (``expect`` polls) or on the API's answer (``eventually``).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.integration.console_fixtures import Console
from tests.support.waiting import eventually


def _transform(step_id: str, expression: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "node": "transform@^1", "params": {"expression": expression}, **extra}


V1 = {
    "id": "quote",
    "steps": [
        _transform("fetch", "`1`"),
        _transform("price", "`2`", needs=["fetch"]),
        _transform("audit", "`3`", needs=["fetch"]),
    ],
}
# v2: "audit" removed, "price" changed (its expression), "notify" added after "price".
V2 = {
    "id": "quote",
    "steps": [
        _transform("fetch", "`1`"),
        _transform("price", "`20`", needs=["fetch"]),
        _transform("notify", "`4`", needs=["price"]),
    ],
}


def _register(console: Console, definition: dict[str, Any]) -> int:
    answer = httpx.post(f"{console.url}/v1/workflows", json=definition, headers=console.headers)
    assert answer.status_code == 201, answer.text
    version: int = answer.json()["version"]
    return version


def _projected(console: Console, workflow_id: str, count: int) -> None:
    def versions() -> int:
        answer = httpx.get(
            f"{console.url}/v1/workflows/{workflow_id}/versions", headers=console.headers
        )
        return len(answer.json()["data"]) if answer.status_code == 200 else 0

    eventually(versions, 20, f"{count} versions of {workflow_id}", until=lambda n: n == count)


def test_list_versions_graph_and_the_diff_between_two_versions(console: Console) -> None:
    assert (_register(console, V1), _register(console, V2)) == (1, 2)
    _projected(console, "quote", 2)
    page = console.page

    console.open("/workflows")
    workflows = page.get_by_role("table", name="Workflows")
    row = workflows.get_by_role("row").filter(has=page.get_by_role("link", name="quote"))
    expect(row).to_contain_text("v2")
    console.screenshot("workflows-list")

    row.get_by_role("link", name="quote").click()
    expect(page).to_have_url(re.compile(r"/ui/workflows/quote$"))
    versions = page.get_by_role("list", name="Versions")
    expect(versions.get_by_role("link")).to_have_text(["v2", "v1"])
    expect(page.get_by_role("link", name="v2")).to_have_attribute("aria-current", "page")
    graph = page.get_by_role("region", name="graph of version 2")
    for step in ("fetch", "price", "notify"):
        expect(graph.get_by_label(f"step {step}")).to_be_visible()
    expect(graph.get_by_label("step audit")).to_have_count(0)
    start = page.get_by_role("link", name="Start run")
    expect(start).to_have_attribute("href", "/ui/runs/new?workflow=quote&version=2")
    console.screenshot("workflow-page")

    page.get_by_role("link", name="v1").click()
    expect(
        page.get_by_role("region", name="graph of version 1").get_by_label("step audit")
    ).to_be_visible()

    compare = page.get_by_role("form", name="Compare versions")
    compare.get_by_label("From").select_option("1")
    compare.get_by_label("To").select_option("2")
    compare.get_by_role("button", name="Compare").click()
    expect(page).to_have_url(re.compile(r"/ui/workflows/quote/diff\?from=1&to=2$"))
    diff = page.get_by_role("region", name="changes from version 1 to 2")
    expect(diff.get_by_label("step notify")).to_have_class(re.compile(r"\bchange-added\b"))
    expect(diff.get_by_label("step audit")).to_have_class(re.compile(r"\bchange-removed\b"))
    expect(diff.get_by_label("step price")).to_have_class(re.compile(r"\bchange-changed\b"))
    expect(diff.get_by_label("step fetch")).not_to_have_class(re.compile(r"\bchange-"))
    summary = page.get_by_role("list", name="Summary of changes")
    expect(summary).to_contain_text("Added: notify")
    expect(summary).to_contain_text("Removed: audit")
    expect(summary).to_contain_text("Changed: price")
    fields = page.get_by_role("table", name="Changed fields")
    expect(fields.get_by_role("row")).to_have_count(2)  # header + price's expression
    expect(fields.get_by_role("row").nth(1)).to_contain_text("price")
    expect(fields.get_by_role("row").nth(1)).to_contain_text("params.expression")
    expect(fields.get_by_role("row").nth(1)).to_contain_text("`20`")
    console.screenshot("workflow-diff")


INVALID = """\
id: edited
steps:
  - id: first
    node: transform@^1
    params: {expression: "`1`"}
  - id: second
    node: transform@^1
    needs: [nope]
    params: {expression: "`2`"}
"""
INVALID_LINE = 8  # the line of `needs: [nope]`
FIXED = INVALID.replace("[nope]", "[first]")


def _replace_text(console: Console, text: str) -> None:
    """Replaces the editor's text the way a user pastes a file (typing key by key would add
    Monaco's auto-indentation to the text's own)."""
    page = console.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.evaluate("text => navigator.clipboard.writeText(text)", text)
    page.locator(".monaco-editor").first.click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.press("ControlOrMeta+V")
    expect(page.locator(".monaco-host .view-lines")).to_contain_text(text.splitlines()[-1].strip())


def test_the_editor_shows_validation_errors_at_their_field_then_saves(console: Console) -> None:
    assert _register(console, {"id": "edited", "steps": [_transform("first", "`1`")]}) == 1
    _projected(console, "edited", 1)
    page = console.page

    console.open("/workflows/edited/edit")
    editor = page.locator(".monaco-host")
    expect(editor).to_contain_text("edited")  # the registered definition, as YAML
    _replace_text(console, INVALID)

    page.get_by_role("button", name="Validate").click()
    problems = page.get_by_role("list", name="Problems")
    expect(problems).to_contain_text("steps[1].needs[0]")
    expect(problems).to_contain_text("unknown step")
    expect(problems).to_contain_text(f"line {INVALID_LINE}")
    # The marker Monaco holds is on that line, and it draws it.
    expect(editor).to_have_attribute("data-marker-lines", str(INVALID_LINE))
    expect(editor.locator(".squiggly-error")).to_have_count(1)
    console.screenshot("workflow-editor-error")
    # The problem's line is a button that puts the cursor on it.
    problems.get_by_role("button", name=f"line {INVALID_LINE}").click()
    expect(editor.locator(".monaco-editor.focused")).to_have_count(1)
    expect(editor.locator(".active-line-number")).to_have_text(str(INVALID_LINE))

    # Nothing was registered by validating.
    versions = httpx.get(f"{console.url}/v1/workflows/edited/versions", headers=console.headers)
    assert [v["version"] for v in versions.json()["data"]] == [1]

    _replace_text(console, FIXED)
    page.get_by_role("button", name="Validate").click()
    expect(page.get_by_role("status").filter(has_text="Valid")).to_contain_text("edited v2")
    expect(problems).to_have_count(0)
    expect(editor).to_have_attribute("data-marker-lines", "")

    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(re.compile(r"/ui/workflows/edited\?version=2$"))
    expect(page.get_by_role("list", name="Versions").get_by_role("link")).to_have_text(["v2", "v1"])
    graph = page.get_by_role("region", name="graph of version 2")
    expect(graph.get_by_label("step second")).to_be_visible()


def test_a_new_workflow_from_the_template_saves_as_version_1(console: Console) -> None:
    page = console.page
    console.open("/workflows")
    page.get_by_role("link", name="New workflow").click()
    expect(page).to_have_url(re.compile(r"/ui/workflows/new$"))
    expect(page.locator(".monaco-host")).to_contain_text("my-workflow")
    page.get_by_role("button", name="Save").click()
    expect(page).to_have_url(re.compile(r"/ui/workflows/my-workflow\?version=1$"))
    expect(page.get_by_role("list", name="Versions").get_by_role("link")).to_have_text(["v1"])


def test_a_yaml_syntax_error_is_marked_at_the_line_the_api_names(console: Console) -> None:
    page = console.page
    console.open("/workflows/new")
    editor = page.locator(".monaco-host")
    expect(editor).to_contain_text("my-workflow")
    _replace_text(console, "id: broken\nsteps:\n  - id: a\n    node: [transform@^1\n")
    page.get_by_role("button", name="Validate").click()
    problems = page.get_by_role("list", name="Problems")
    expect(problems).to_contain_text("(document)")
    expect(problems).to_contain_text("not valid YAML")
    line = re.search(r"at line (\d+)", problems.inner_text())  # where the API says
    assert line is not None
    expect(editor).to_have_attribute("data-marker-lines", line.group(1))
    expect(editor.locator(".squiggly-error")).to_have_count(1)
