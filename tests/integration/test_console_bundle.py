"""The console's production bundle stays small: every file of web/dist gzipped is under 1 MB in
all (issue 16), and the first load (index.html, the files it links: entry chunk and CSS) is a
fraction of that. Prints the totals and the largest chunks, for the report."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from api.console import DEFAULT_CONSOLE_DIR

LIMIT_BYTES = 1_000_000
INITIAL_LIMIT_BYTES = 300_000
"""The shell, the router and the API client: the areas' chunks load when opened."""


def _gzipped(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def _files(root: Path) -> dict[str, int]:
    if not (root / "index.html").is_file():
        pytest.fail(f"the console is not built in {root}: `make web` builds it")
    return {
        str(path.relative_to(root)): _gzipped(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _initial(root: Path) -> list[str]:
    """index.html and what it loads at once (script, stylesheet, module preloads)."""
    index = (root / "index.html").read_text(encoding="utf-8")
    linked = re.findall(r'(?:src|href)="/ui/([^"]+)"', index)
    return ["index.html", *linked]


def test_the_production_bundle_is_under_1_mb_gzipped() -> None:
    sizes = _files(DEFAULT_CONSOLE_DIR)
    total = sum(sizes.values())
    initial = _initial(DEFAULT_CONSOLE_DIR)
    assert all(name in sizes for name in initial), f"index.html links a missing file: {initial}"
    initial_total = sum(sizes[name] for name in initial)
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:8]
    print(f"\nconsole bundle: {len(sizes)} files, {total / 1024:.1f} KiB gzipped in all")
    print(f"initial load ({', '.join(initial)}): {initial_total / 1024:.1f} KiB gzipped")
    for name, size in largest:
        print(f"  {size / 1024:8.1f} KiB  {name}")
    assert total < LIMIT_BYTES, f"{total} bytes gzipped, over {LIMIT_BYTES}"
    assert initial_total < INITIAL_LIMIT_BYTES, f"first load {initial_total} bytes gzipped"
