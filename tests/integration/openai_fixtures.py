"""A local OpenAI-compatible server for tests: loopback, ephemeral port, deterministic answers.

Use the ``openai_server`` fixture; point a node at ``openai_server.base_url`` with
``api_key = openai_server.api_key``. ``POST /v1/chat/completions`` answers:

- ``401`` (OpenAI's error shape) unless ``Authorization: Bearer <api_key>``;
- ``404 model_not_found`` for the model ``"missing-model"``; ``400`` for a body without
  ``model`` or ``messages``;
- otherwise ``"echo: <last user message>"`` (``{"echo": ...}`` as JSON text when
  ``response_format`` is ``json_object``), from model ``"<model>-test"``, with ``usage``
  counting words: prompt = words in all messages, completion = words in the answer. With
  ``max_tokens`` the answer is cut to that many words and ``finish_reason`` is ``"length"``.

Switches: ``fail_next(status, times=1)`` answers the next requests with that status (``429``
and ``503`` carry ``Retry-After: 2``); ``delay_s`` sleeps before answering; ``reply`` replaces
the answer text; ``script(*texts)`` queues answer texts used one per request, in order, before
``reply`` (e.g. an invalid plan, then a valid one); ``omit_usage`` drops ``usage``. Every request
is recorded (``calls``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["OpenAITestServer", "RecordedCall", "openai_server", "serve_openai"]

MAX_BODY = 1024 * 1024
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


@dataclass(frozen=True, slots=True)
class RecordedCall:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _State:
    api_key: str
    calls: list[RecordedCall] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    reply: str | None = None
    script: list[str] = field(default_factory=list)
    omit_usage: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _words(text: str) -> int:
    return len(text.split())


def _completion(
    body: dict[str, Any], state: _State, number: int, scripted: str | None
) -> dict[str, Any]:
    messages = body["messages"]
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    wants_json = (body.get("response_format") or {}).get("type") == "json_object"
    if scripted is not None:
        content = scripted
    elif state.reply is not None:
        content = state.reply
    elif wants_json:
        content = json.dumps({"echo": last_user})
    else:
        content = f"echo: {last_user}"
    finish = "stop"
    limit = body.get("max_tokens")
    if isinstance(limit, int) and _words(content) > limit:
        content, finish = " ".join(content.split()[:limit]), "length"
    prompt = sum(_words(str(m.get("content", ""))) for m in messages)
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": f"{body['model']}-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
    }
    if not state.omit_usage:
        answer["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": _words(content),
            "total_tokens": prompt + _words(content),
        }
    return answer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        extra = {"Retry-After": "2"} if status in {429, 503} else {}
        error = {"message": message, "type": _ERROR_TYPES.get(status, "server_error")}
        self._send(status, {"error": {**error, "param": None, "code": code}}, extra)

    def do_POST(self) -> None:
        state = self.server.state
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        with state.lock:
            state.calls.append(RecordedCall(self.path, headers, body))
            number = len(state.calls)
            failure = state.failures.pop(0) if state.failures else None
            answers = failure is None and self.path == "/v1/chat/completions"
            scripted = state.script.pop(0) if answers and state.script else None
            delay = state.delay_s
        if delay:
            time.sleep(delay)  # a slow API is the thing under test, not a wait
        if self.path != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
        elif headers.get("authorization") != f"Bearer {state.api_key}":
            self._error(401, "Incorrect API key provided.", "invalid_api_key")
        elif failure is not None:
            self._error(failure, f"injected failure {failure}")
        elif not isinstance(body, dict) or "model" not in body or not body.get("messages"):
            self._error(400, "'model' and 'messages' are required properties")
        elif body["model"] == "missing-model":
            self._error(404, "The model 'missing-model' does not exist", "model_not_found")
        else:
            self._send(200, _completion(body, state, number, scripted))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that times out closes the socket mid-answer; that is what tests provoke.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class OpenAITestServer:
    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.base_url = f"http://{host!s}:{port}/v1"
        self.api_key = server.state.api_key

    @property
    def calls(self) -> list[RecordedCall]:
        with self._server.state.lock:
            return list(self._server.state.calls)

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._server.state.lock:
            self._server.state.failures.extend([status] * times)

    @property
    def delay_s(self) -> float:
        return self._server.state.delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._server.state.delay_s = value

    @property
    def reply(self) -> str | None:
        return self._server.state.reply

    @reply.setter
    def reply(self, value: str | None) -> None:
        self._server.state.reply = value

    def script(self, *texts: str) -> None:
        """Answer the next requests with these texts, one each, in order."""
        with self._server.state.lock:
            self._server.state.script.extend(texts)

    @property
    def omit_usage(self) -> bool:
        return self._server.state.omit_usage

    @omit_usage.setter
    def omit_usage(self, value: bool) -> None:
        self._server.state.omit_usage = value


@contextmanager
def serve_openai(api_key: str = "test-key-0123") -> Iterator[OpenAITestServer]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = _State(api_key=api_key)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield OpenAITestServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def openai_server() -> Iterator[OpenAITestServer]:
    """A fresh OpenAI-compatible server per test."""
    with serve_openai() as server:
        yield server
