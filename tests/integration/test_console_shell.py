"""The console's shell: served under /ui with deep links, signs in from a link's fragment or a
typed key, refuses a bad key with the API's reason, and never keeps the key in the address."""

from __future__ import annotations

import httpx
from playwright.sync_api import expect

from tests.integration.console_fixtures import Console


def test_a_deep_link_signs_in_from_the_fragment_and_drops_it(console: Console) -> None:
    console.open("/workflows")
    expect(console.page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(console.page.get_by_role("link", name="Workflows")).to_have_class("active")
    assert "key=" not in console.page.url  # the credential left the address bar
    assert console.page.url.endswith("/ui/workflows")


def test_a_bad_key_is_refused_with_the_api_s_reason(console: Console) -> None:
    console.page.goto(f"{console.url}/ui/runs")
    console.page.get_by_label("API key or token").fill("rfx_nosuchkey_secret")
    console.page.get_by_role("button", name="Sign in").click()
    alert = console.page.get_by_role("alert")
    expect(alert).to_contain_text("Sign-in refused")
    expect(alert).to_contain_text("HTTP 401")
    console.page.get_by_label("API key or token").fill(console.key)
    console.page.get_by_role("button", name="Sign in").click()
    expect(console.page.get_by_role("navigation", name="Main")).to_be_visible()


def test_ui_serves_the_app_its_assets_and_404s_a_missing_chunk(console: Console) -> None:
    index = httpx.get(f"{console.url}/ui/runs/some-run-id")
    assert index.status_code == 200
    assert '<div id="root">' in index.text
    assert index.headers["cache-control"] == "no-cache"
    assert httpx.get(f"{console.url}/ui/assets/nope.js").status_code == 404
    escape = httpx.get(f"{console.url}/ui/..%2f..%2fpyproject.toml")
    assert "[project]" not in escape.text
