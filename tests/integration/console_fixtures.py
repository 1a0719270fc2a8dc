"""The web console against the real stack: the engine (harness), the API with the built console
under /ui served by uvicorn on a free port, an admin API key made the real way (``reflux
api-keys create``), and headless Chromium (Debian's, driven by Playwright; nothing downloaded).

``console`` signs the browser in with the key in the link's fragment (``/ui/...#key=...``), as
the link ``make demo`` prints does. Screenshots land in var/console-screenshots/, or with
``make console-screenshots`` in docs/console/ (shown in the README).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from api.app import create_app
from api.config import ApiSettings
from api.console import DEFAULT_CONSOLE_DIR
from foundation.settings import Settings
from projections.clickhouse import ClickHouse, connect
from projections.traces.migrations import apply, drop
from reflux.cli import main
from tests.integration.engine_fixtures import Harness
from tests.support.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
# `make test` keeps its screenshots under var/ (the tree stays clean: every run has new ids and
# times); `make console-screenshots` runs the console tests with docs/console/ here.
SCREENSHOTS = ROOT / os.environ.get("REFLUX_CONSOLE_SCREENSHOTS", "var/console-screenshots")


@dataclass
class Console:
    url: str
    """The API's base URL (the console is under ``{url}/ui``)."""
    key: str
    """An admin API key, for the browser and for arranging data through /v1."""
    harness: Harness
    page: Page

    def open(self, path: str = "/runs") -> None:
        """Loads a console page (``path`` below /ui), signed in."""
        self.page.goto(f"{self.url}/ui{path}#key={self.key}")

    def screenshot(self, name: str) -> Path:
        """A full-page screenshot of the current page in :data:`SCREENSHOTS`/<name>.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=True)
        return target

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


# Module scope, not session: while Playwright's sync API is started it has set an asyncio loop
# as the thread's running loop, so a later test module in the same xdist worker that calls
# asyncio.run() fails ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make up` installs Debian's chromium")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    launched = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
    )
    yield launched
    launched.close()


@contextlib.contextmanager
def _serve_console(
    harness: Harness,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    clickhouse: ClickHouse | None = None,
    **api_fields: Any,
) -> Iterator[tuple[str, str]]:
    """The API (with the console) on a free port, and an admin key: ``(url, key)``."""
    if not (DEFAULT_CONSOLE_DIR / "index.html").is_file():
        pytest.fail(f"the console is not built in {DEFAULT_CONSOLE_DIR}: `make web` builds it")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api_schema = f"{harness.schema}_api"
    monkeypatch.setenv("REFLUX_API_API_SCHEMA", api_schema)
    monkeypatch.setenv("REFLUX_POSTGRES_DSN", harness.settings.postgres_dsn)
    args = ["api-keys", "create", "--role", "admin", "--name", "console-test", "--write-to"]
    assert main([*args, str(key_file)]) == 0
    fields: dict[str, Any] = {
        "read_schema": harness.schema,
        "api_schema": api_schema,
        "poll_interval_s": 0.05,
        "clickhouse_enabled": False,  # one chdb per process: metrics live in test_traces.py
        "console_dir": DEFAULT_CONSOLE_DIR,
    }
    fields.update(api_fields)
    app = create_app(harness.settings, ApiSettings(**fields), clickhouse=clickhouse)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        if not server.started and not thread.is_alive():
            pytest.fail(f"the API server thread ended before listening on port {port}")
        return server.started

    eventually(started, 20, f"the API to listen on port {port}")
    try:
        yield f"http://127.0.0.1:{port}", key_file.read_text().strip()
    finally:
        server.should_exit = True
        thread.join(10)
        with psycopg.connect(harness.settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{api_schema}" CASCADE')


@pytest.fixture
def console_api(
    harness: Harness, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    """The API (with the console) on a free port, and an admin key: ``(url, key)``."""
    key_file = tmp_path_factory.mktemp("console-key") / "api-key"
    with _serve_console(harness, key_file, monkeypatch) as served:
        yield served


def _console(url: str, key: str, harness: Harness, browser: Browser) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield Console(url=url, key=key, harness=harness, page=page)
    context.close()


@pytest.fixture
def console(console_api: tuple[str, str], harness: Harness, browser: Browser) -> Iterator[Console]:
    url, key = console_api
    yield from _console(url, key, harness, browser)


# -- the console with metrics: a ClickHouse (chdb) traces store fed by the harness's traces -------
# chdb allows one session per process: a module that uses ``metrics_console`` opens its own store
# (module scope, like tests/integration/test_traces.py) and must not share a process with another
# chdb module at the same time (``--dist loadfile`` runs a module in one process, one module after
# the other).


@pytest.fixture(scope="module")
def traces_store(
    local_services: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClickHouse]:
    folder = tmp_path_factory.mktemp("console-chdb")
    ch = connect(local_services.model_copy(update={"clickhouse_dsn": f"chdb://{folder}"}))
    yield ch
    ch.close()


@dataclass
class MetricsConsole(Console):
    clickhouse: ClickHouse
    database: str
    """The ClickHouse database the harness's traces are ingested into."""


@pytest.fixture
def metrics_console(
    harness: Harness,
    traces_store: ClickHouse,
    browser: Browser,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MetricsConsole]:
    """``console`` whose API serves /v1/metrics from a traces store that ingests the harness's
    traces topic (its own database, dropped afterwards: before the topic goes)."""
    settings = harness.settings
    database = "t_" + settings.topic_prefix.replace("-", "_").replace(".", "_")
    apply(traces_store, settings, database=database)
    key_file = tmp_path_factory.mktemp("console-key") / "api-key"
    try:
        with _serve_console(
            harness,
            key_file,
            monkeypatch,
            clickhouse=traces_store,
            clickhouse_database=database,
            alert_evaluator=False,
        ) as (url, key):
            for console in _console(url, key, harness, browser):
                yield MetricsConsole(
                    url=console.url,
                    key=console.key,
                    harness=harness,
                    page=console.page,
                    clickhouse=traces_store,
                    database=database,
                )
    finally:
        drop(traces_store, database)
