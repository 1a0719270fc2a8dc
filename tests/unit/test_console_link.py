"""The console link `make demo` and `reflux dev` print: signed in only when asked (a terminal),
with the key in the fragment, URL-quoted; `reflux demo --stay` parses."""

from __future__ import annotations

import pytest

from reflux.cli import build_parser
from reflux.credentials import console_link


def test_without_sign_in_the_link_carries_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFLUX_API_KEY", "rfx_abc_secret")
    assert console_link("http://127.0.0.1:8000/", sign_in=False) == "http://127.0.0.1:8000/ui/runs"


def test_a_signed_in_link_has_the_quoted_key_in_the_fragment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFLUX_API_KEY", "rfx_a/b+c")
    link = console_link("http://h:1", "/workflows", sign_in=True)
    assert link == "http://h:1/ui/workflows#key=rfx_a%2Fb%2Bc"


def test_demo_stay_parses() -> None:
    assert build_parser().parse_args(["demo", "--stay"]).stay is True
    assert build_parser().parse_args(["demo"]).stay is False
