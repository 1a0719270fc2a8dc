"""Local stub services for the loop benchmark (``make bench-loop``), each in its own process.

Two stubs, both asyncio HTTP/1.1 servers on 127.0.0.1 (an ephemeral port, printed as the first
line of stdout) that run until their stdin closes, like :mod:`benchmarks.slow_service`. Their
randomness comes from a seed, drawn in request arrival order, so one seed gives one sequence of
outcomes for one sequence of requests.

**dependency** (``python -m benchmarks.loop.stubs dependency --config JSON``): a flaky HTTP
dependency. A :class:`Profile` says how a request goes: latency lognormal (``median_ms`` and
``sigma``, the standard deviation of the log), ``error_rate`` (answered ``error_status``, 503 by
default, after the latency), ``hang_share`` (held ``hang_s`` seconds, then 504: clients time out
first). The profile changes at a known point: ``change: {"after": N, "profile": {...}}`` in the
config switches it once N requests were served (request N+1 is the first under the new profile),
and ``POST /_stub/control`` ``{"profile": {...}, "after": N}`` does the same at run time (``after``
omitted: at once). Profiles given as partial objects are merged onto the current one.
Every other path is served: ``200 {"ok": true, "n": <request number>, "path": ...}``. ``/kv/<key>``
is a small store with the same latency and faults (``PUT``/``POST`` stores the JSON body,
``GET`` answers ``{"key", "value"}``, ``value`` null when unset): two steps that talk through it
have an ordering dependency no template shows. ``GET /_stub/stats``: requests, ok, errors, hangs,
in flight, the current profile, ``changed_at`` (the request count at the switch, null before).

**openai** (``python -m benchmarks.loop.stubs openai --config JSON``): an OpenAI-compatible chat
API (``POST /v1/chat/completions``; any ``Authorization: Bearer <non-empty>``) with models
described by :class:`ModelProfile`: lognormal latency, ``completion_tokens`` per answer (the
cost: ``usage`` counts prompt words + these), and an accuracy per difficulty. The last user
message is a question from :func:`question_set` ("What is 3 + 4? Answer with the number only.");
the stub computes the right answer and, with probability ``1 - accuracy[difficulty]``, answers a
wrong number instead. Other prompts get ``"echo: <text>"``; with ``response_format: json_object``
the text comes as ``{"answer": <text>}``. Unknown models get 404
``model_not_found``. Model profiles change like the dependency's: ``change: {"after": N, "models":
{"small": {...}}}`` (N counted over all completions) or ``POST /_stub/control {"models": {...},
"after": N}``. ``GET /_stub/stats``: per model requests and correct answers.

In Python, :func:`dependency_stub` and :func:`openai_stub` start one as a subprocess and yield a
:class:`StubProcess` (``base_url``, ``control()``, ``stats()``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "ModelProfile",
    "Profile",
    "Question",
    "StubProcess",
    "dependency_stub",
    "openai_stub",
    "question_set",
]

Difficulty = Literal["easy", "hard"]
CONTROL_PREFIX = "/_stub/"


# ---------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class Profile:
    """How the dependency answers, per request."""

    median_ms: float = 20.0
    sigma: float = 0.25
    error_rate: float = 0.0
    hang_share: float = 0.0
    hang_s: float = 30.0
    error_status: int = 503

    def merged(self, patch: dict[str, Any]) -> Profile:
        unknown = set(patch) - set(asdict(self))
        if unknown:
            raise ValueError(
                f"unknown profile fields {sorted(unknown)} (known: {sorted(asdict(self))})"
            )
        return replace(self, **patch)


@dataclass(frozen=True)
class ModelProfile:
    """One model of the OpenAI-compatible stub."""

    median_ms: float = 200.0
    sigma: float = 0.2
    completion_tokens: int = 20
    accuracy: dict[str, float] = field(default_factory=lambda: {"easy": 0.95, "hard": 0.9})
    error_rate: float = 0.0

    def merged(self, patch: dict[str, Any]) -> ModelProfile:
        unknown = set(patch) - set(asdict(self))
        if unknown:
            raise ValueError(
                f"unknown model fields {sorted(unknown)} (known: {sorted(asdict(self))})"
            )
        if "accuracy" in patch:
            patch = {**patch, "accuracy": {**self.accuracy, **patch["accuracy"]}}
        return replace(self, **patch)


def lognormal_s(rng: random.Random, median_ms: float, sigma: float) -> float:
    """A lognormal latency in seconds: ``median * exp(sigma * N(0, 1))``."""
    return median_ms * math.exp(sigma * rng.gauss(0.0, 1.0)) / 1000.0


# ---------------------------------------------------------------------------------------------
# Questions


@dataclass(frozen=True)
class Question:
    id: str
    prompt: str
    answer: str
    difficulty: Difficulty


_QUESTION = re.compile(r"What is ([0-9+\-* ]+)\?")


def question_set(n: int = 40, seed: int = 7) -> list[Question]:
    """``n`` arithmetic questions, half easy (``a + b``), half hard (``a * b - c``)."""
    rng = random.Random(seed)
    out: list[Question] = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            expression, value, difficulty = f"{a} + {b}", a + b, "easy"
        else:
            a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(1, 99)
            expression, value, difficulty = f"{a} * {b} - {c}", a * b - c, "hard"
        out.append(
            Question(
                id=f"q{i:03d}",
                prompt=f"What is {expression}? Answer with the number only.",
                answer=str(value),
                difficulty=difficulty,  # type: ignore[arg-type]
            )
        )
    return out


def _evaluate(expression: str) -> tuple[int, Difficulty] | None:
    """The value of ``a + b`` or ``a * b - c`` (integers only, never ``eval``)."""
    tokens = expression.split()
    try:
        if len(tokens) == 3 and tokens[1] == "+":
            return int(tokens[0]) + int(tokens[2]), "easy"
        if len(tokens) == 5 and tokens[1] == "*" and tokens[3] == "-":
            return int(tokens[0]) * int(tokens[2]) - int(tokens[4]), "hard"
    except ValueError:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 server


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    parts = line.decode("latin-1").split()
    headers: dict[str, str] = {}
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return Request(parts[0].upper(), parts[1] if len(parts) > 1 else "/", headers, body)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


def _response(status: int, body: Any) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + data


Answer = tuple[int, Any]


class _Stub:
    """Subclasses answer requests; the control paths are shared."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.in_flight = 0
        self.pending_after: int | None = None

    async def answer(self, request: Request) -> Answer:
        raise NotImplementedError

    def control(self, body: dict[str, Any]) -> Answer:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    async def route(self, request: Request) -> Answer:
        if request.target.startswith(CONTROL_PREFIX + "stats"):
            return 200, self.stats()
        if request.target.startswith(CONTROL_PREFIX + "control"):
            try:
                body = request.json()
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                return self.control(body)
            except (ValueError, TypeError) as exc:
                return 400, {"error": str(exc)}
        self.in_flight += 1
        try:
            return await self.answer(request)
        finally:
            self.in_flight -= 1


class DependencyStub(_Stub):
    def __init__(self, seed: int, profile: Profile, change: dict[str, Any] | None) -> None:
        super().__init__(seed)
        self.profile = profile
        self.pending: Profile | None = None
        if change:
            self.pending = profile.merged(change.get("profile", {}))
            self.pending_after = int(change["after"])
        self.changed_at: int | None = None
        self.requests = self.ok = self.errors = self.hangs = 0
        self.kv: dict[str, Any] = {}

    def _switch_if_due(self) -> None:
        due = self.pending_after is not None and self.requests >= self.pending_after
        if self.pending is not None and due:
            self.profile, self.pending = self.pending, None
            self.changed_at, self.pending_after = self.requests, None

    async def answer(self, request: Request) -> Answer:
        self._switch_if_due()
        self.requests += 1
        number, profile = self.requests, self.profile
        hang = self.rng.random() < profile.hang_share
        error = self.rng.random() < profile.error_rate
        delay = lognormal_s(self.rng, profile.median_ms, profile.sigma)
        if hang:
            self.hangs += 1
            await asyncio.sleep(profile.hang_s)  # the fault under test: the client times out
            return 504, {"error": "hung"}
        await asyncio.sleep(delay)  # the dependency's latency: what is measured
        if error:
            self.errors += 1
            return profile.error_status, {"error": "injected", "n": number}
        self.ok += 1
        if request.target.startswith("/kv/"):
            key = request.target.removeprefix("/kv/")
            if request.method in ("PUT", "POST"):
                self.kv[key] = request.json()
            return 200, {"key": key, "value": self.kv.get(key), "n": number}
        return 200, {"ok": True, "n": number, "path": request.target}

    def control(self, body: dict[str, Any]) -> Answer:
        target = self.profile.merged(body.get("profile", {}))
        if body.get("after") is None:
            self.profile, self.pending, self.pending_after = target, None, None
            self.changed_at = self.requests
        else:
            self.pending, self.pending_after = target, int(body["after"])
        return 200, self.stats()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "hangs": self.hangs,
            "in_flight": self.in_flight,
            "profile": asdict(self.profile),
            "changed_at": self.changed_at,
            "change_after": self.pending_after,
        }


class OpenAIStub(_Stub):
    def __init__(
        self, seed: int, models: dict[str, ModelProfile], change: dict[str, Any] | None
    ) -> None:
        super().__init__(seed)
        self.models = models
        self.pending: dict[str, dict[str, Any]] | None = None
        if change:
            self.pending = dict(change.get("models", {}))
            self.pending_after = int(change["after"])
        self.changed_at: int | None = None
        self.completions = 0
        self.counts: dict[str, dict[str, int]] = {}

    def _apply(self, patches: dict[str, dict[str, Any]]) -> None:
        for name, patch in patches.items():
            self.models[name] = self.models.get(name, ModelProfile()).merged(patch)

    def _switch_if_due(self) -> None:
        due = self.pending_after is not None and self.completions >= self.pending_after
        if self.pending is not None and due:
            self._apply(self.pending)
            self.pending, self.pending_after = None, None
            self.changed_at = self.completions

    async def answer(self, request: Request) -> Answer:
        if request.method != "POST" or not request.target.startswith("/v1/chat/completions"):
            return 404, _openai_error(f"no route {request.target}", "invalid_request_error")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return 401, _openai_error(
                "Missing API key.", "invalid_request_error", "invalid_api_key"
            )
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "model" not in body or not body.get("messages"):
            return 400, _openai_error(
                "'model' and 'messages' are required properties", "invalid_request_error"
            )
        name = str(body["model"])
        if name not in self.models:
            return 404, _openai_error(
                f"The model '{name}' does not exist", "invalid_request_error", "model_not_found"
            )
        self._switch_if_due()
        self.completions += 1
        model = self.models[name]
        counts = self.counts.setdefault(
            name, {"requests": 0, "correct": 0, "questions": 0, "errors": 0}
        )
        counts["requests"] += 1
        delay = lognormal_s(self.rng, model.median_ms, model.sigma)
        draw, failed = self.rng.random(), self.rng.random() < model.error_rate
        await asyncio.sleep(delay)  # the model's latency: what is measured
        if failed:
            counts["errors"] += 1
            return 503, _openai_error("injected failure", "server_error")
        messages = body["messages"]
        last_user = next(
            (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        found = _QUESTION.search(last_user)
        solved = _evaluate(found.group(1)) if found else None
        if solved is None:
            content = f"echo: {last_user}"
        else:
            value, difficulty = solved
            counts["questions"] += 1
            if draw < model.accuracy.get(difficulty, 0.0):
                counts["correct"] += 1
                content = str(value)
            else:
                content = str(value + self.rng.choice([-10, -2, -1, 1, 2, 10]))
        if (body.get("response_format") or {}).get("type") == "json_object":
            content = json.dumps({"answer": content})  # what a JSON-mode model would send
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        return 200, {
            "id": f"chatcmpl-{self.completions}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": model.completion_tokens,
                "total_tokens": prompt + model.completion_tokens,
            },
        }

    def control(self, body: dict[str, Any]) -> Answer:
        patches = body.get("models", {})
        if not isinstance(patches, dict):
            raise ValueError("expected models to be an object of model name -> fields")
        for name, patch in patches.items():  # validate before applying or scheduling
            self.models.get(name, ModelProfile()).merged(patch)
        if body.get("after") is None:
            self._apply(patches)
            self.changed_at = self.completions
        else:
            self.pending, self.pending_after = dict(patches), int(body["after"])
        return 200, self.stats()

    def stats(self) -> dict[str, Any]:
        return {
            "completions": self.completions,
            "in_flight": self.in_flight,
            "models": {name: asdict(model) for name, model in self.models.items()},
            "counts": self.counts,
            "changed_at": self.changed_at,
            "change_after": self.pending_after,
        }


def _openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def serve(stub: _Stub) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                status, body = await stub.route(request)
                writer.write(_response(status, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # shutdown while a request hangs: nothing to report
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Runs until the parent closes our stdin (or dies).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


def build_stub(kind: str, config: dict[str, Any]) -> _Stub:
    seed = int(config.get("seed", 0))
    if kind == "dependency":
        profile = Profile().merged(config.get("profile", {}))
        return DependencyStub(seed, profile, config.get("change"))
    if kind == "openai":
        models = {
            name: ModelProfile().merged(spec) for name, spec in config.get("models", {}).items()
        }
        return OpenAIStub(seed, models, config.get("change"))
    raise ValueError(f"unknown stub {kind!r} (known: dependency, openai)")


# ---------------------------------------------------------------------------------------------
# The parent's side


class StubProcess:
    """A running stub: its base URL, and its control and stats endpoints."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI stub's ``base_url`` for ``openai.chat`` (``.../v1``)."""
        return f"{self.url}/v1"

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{CONTROL_PREFIX}{path}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # our own stub
            answer: dict[str, Any] = json.load(response)
            return answer

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def control(self, **body: Any) -> dict[str, Any]:
        """``control(profile={...}, after=N)`` / ``control(models={...})``."""
        return self._call("control", body)


@contextlib.contextmanager
def _start(kind: str, config: dict[str, Any]) -> Iterator[StubProcess]:
    build_stub(kind, config)  # a bad config fails here, in the caller, with its message
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.loop.stubs", kind, "--config", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"stub {kind} exited before listening (status {process.poll()})")
        yield StubProcess(process, int(line))
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def dependency_stub(
    profile: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    change_after: int | None = None,
    change_to: dict[str, Any] | None = None,
) -> contextlib.AbstractContextManager[StubProcess]:
    """``with dependency_stub({"error_rate": 0.02}, seed=1, change_after=500,
    change_to={"error_rate": 0.3, "hang_share": 0.02}) as dep: ... dep.url ...``"""
    config: dict[str, Any] = {"seed": seed, "profile": profile or {}}
    if change_after is not None:
        config["change"] = {"after": change_after, "profile": change_to or {}}
    return _start("dependency", config)


def openai_stub(
    models: dict[str, dict[str, Any]],
    *,
    seed: int = 0,
    change_after: int | None = None,
    change_to: dict[str, dict[str, Any]] | None = None,
) -> contextlib.AbstractContextManager[StubProcess]:
    """``with openai_stub({"big": {...}, "small": {...}}, seed=1) as llm: ... llm.base_url ...``"""
    config: dict[str, Any] = {"seed": seed, "models": models}
    if change_after is not None:
        config["change"] = {"after": change_after, "models": change_to or {}}
    return _start("openai", config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop.stubs", description=__doc__)
    parser.add_argument("kind", choices=["dependency", "openai"])
    parser.add_argument("--config", default="{}", help="JSON: seed, profile|models, change")
    args = parser.parse_args(argv)
    asyncio.run(serve(build_stub(args.kind, json.loads(args.config))))


if __name__ == "__main__":
    main()
