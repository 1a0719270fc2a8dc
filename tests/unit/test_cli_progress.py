"""Progress bars (reflux/progress.py): on stderr only on a terminal or when forced, never on
stdout (issue 14 item 5)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from foundation import settings as settings_module
from reflux.progress import progress_bar, progress_enabled


@pytest.fixture
def progress_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    settings_module.get_settings.cache_clear()
    yield
    monkeypatch.delenv("REFLUX_PROGRESS", raising=False)
    settings_module.get_settings.cache_clear()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(stream: io.StringIO, *, enabled: bool = True) -> str:
    with progress_bar("starting runs", 5, stream=stream, enabled=enabled) as bar:
        for _ in bar.each(range(5)):
            pass
    return stream.getvalue()


def test_forced_shows_the_final_state(
    progress_mode: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REFLUX_PROGRESS", "always")
    settings_module.get_settings.cache_clear()
    drawn = _draw(io.StringIO())
    assert "starting runs" in drawn and "5/5" in drawn
    assert capsys.readouterr().out == ""  # never on stdout


def test_piped_has_no_bar(progress_mode: None) -> None:
    assert not progress_enabled(io.StringIO())
    assert _draw(io.StringIO()) == ""


def test_a_terminal_gets_the_bar_unless_told_never(
    progress_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "5/5" in _draw(_Terminal())
    assert _draw(_Terminal(), enabled=False) == ""  # e.g. --json
    monkeypatch.setenv("REFLUX_PROGRESS", "never")
    settings_module.get_settings.cache_clear()
    assert _draw(_Terminal()) == ""
