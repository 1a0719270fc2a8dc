"""One JSON error answer sent straight over ASGI, for middleware that answers before routing
(body limits, rate limits): ``{"detail": ...}``, as the app's exception handlers answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.types import Send

__all__ = ["answer_json"]


async def answer_json(
    send: Send, status: int, detail: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
