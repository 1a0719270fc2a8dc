"""The web console (``web/``, issue 16) under ``/ui``.

The production build's files are served as they are; every other path below ``/ui`` answers
the app's ``index.html``, so a deep link (``/ui/runs/<id>``) loads the app, which routes in the
browser. The console is code only: its data comes from ``/v1`` with the user's own credential,
like any other client, so ``/ui`` needs none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import FileResponse, PlainTextResponse, Response

CONSOLE_PREFIX: Final = "/ui"
DEFAULT_CONSOLE_DIR: Final = Path(__file__).resolve().parents[1] / "web" / "dist"

# Vite names built assets by content hash: a cached one never goes stale. index.html must be
# revalidated, or a browser keeps loading the chunks of an old build.
_IMMUTABLE = "public, max-age=31536000, immutable"
_SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def install_console(app: FastAPI, directory: Path | None = None) -> None:
    root = (directory or DEFAULT_CONSOLE_DIR).resolve()

    def answer(path: str) -> Response:
        index = root / "index.html"
        if not index.is_file():
            return PlainTextResponse(
                f"The web console is not built: `make web` builds it into {root}.",
                status_code=404,
            )
        target = (root / path).resolve()
        if path and target.is_relative_to(root) and target.is_file():
            cache = _IMMUTABLE if path.startswith("assets/") else "no-cache"
            return FileResponse(target, headers={**_SECURITY_HEADERS, "Cache-Control": cache})
        if path.startswith("assets/"):  # a missing chunk is an error, not the app
            return PlainTextResponse(f"No console asset {path!r}.", status_code=404)
        return FileResponse(index, headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})

    @app.get(CONSOLE_PREFIX, include_in_schema=False)
    def console_root() -> Response:
        return answer("")

    @app.get(CONSOLE_PREFIX + "/{path:path}", include_in_schema=False)
    def console_path(path: str) -> Response:
        return answer(path)
