"""The in-sandbox side of one job: ``run`` (one attempt) or ``test`` (the artifact's tests).

Paths come from the environment the worker sets (defaults: the sandbox's layout): the artifact's
files in ``REFLUX_SRC`` (/work/src, on ``sys.path``), the input in ``REFLUX_IN``/input.json,
the declared and granted secrets in ``REFLUX_IN``/secrets.json (read-only, this job's own), the
answer in ``REFLUX_OUT``/result.json or report.json. The worker reads only those files; a
program that dies before writing one is reported by the worker from its exit and logs.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import socket
import sys
import time
import traceback
from typing import Any

from . import EGRESS_SOCKET, Context, NodeFailure

__all__ = ["classify", "main", "policy_violation", "run_node", "run_tests"]

_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
_NO_NETWORK = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _inside(path: str, folder: str) -> bool:
    full = os.path.abspath(path)
    return full == folder or full.startswith(folder.rstrip("/") + "/")


def policy_violation(exc: BaseException, work: str = "/work") -> tuple[str, str] | None:
    """``(error_class, reason)`` when ``exc`` (or what caused it) is the sandbox refusing
    something: a write outside the work folder, or network used around ``ctx.http``."""
    for item in _chain(exc):
        if isinstance(item, socket.gaierror) or (
            isinstance(item, OSError) and item.errno in _NO_NETWORK
        ):
            return (
                "EgressDenied",
                f"the sandbox has no network ({item}); reach declared hosts with ctx.http, "
                "which goes through the egress proxy",
            )
        if isinstance(item, OSError) and item.errno in _REFUSED:
            path = item.filename if isinstance(item.filename, str) else None
            if path is not None and not _inside(path, work):
                return (
                    "SandboxPolicy",
                    f"writing {os.path.abspath(path)} was refused ({os.strerror(item.errno)}): "
                    f"only the work folder {work} is writable in the sandbox",
                )
    return None


def _where(exc: BaseException, src: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _inside(f.filename, src)]
    if not frames:
        return ""
    last = frames[-1]
    return f" ({os.path.relpath(last.filename, src)} line {last.lineno}, in {last.name})"


def classify(exc: BaseException, *, src: str = "/work/src", work: str = "/work") -> dict[str, Any]:
    """The failed answer for an exception the node code raised."""
    if isinstance(exc, NodeFailure):
        return {
            "ok": False,
            "error_class": exc.error_class,
            "message": exc.message,
            "retryable": bool(exc.retryable),
        }
    policy = policy_violation(exc, work)
    if policy is not None:
        return {"ok": False, "error_class": policy[0], "message": policy[1], "retryable": False}
    return {
        "ok": False,
        "error_class": "NodeCodeError",
        "message": f"{type(exc).__name__}: {exc}{_where(exc, src)}",
        "retryable": False,
    }


def _write(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle)


def _read_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _import(src: str, filename: str) -> Any:
    if src not in sys.path:
        sys.path.insert(0, src)
    return importlib.import_module(filename[: -len(".py")])


def run_node() -> dict[str, Any]:
    src, work = _env("REFLUX_SRC", "/work/src"), _env("REFLUX_WORK", "/work")
    inputs = _env("REFLUX_IN", "/work/in")
    try:
        params = _read_json(os.path.join(inputs, "input.json"), {})
        secrets = _read_json(os.path.join(inputs, "secrets.json"), {})
        ctx = Context(secrets, egress_socket=_env("REFLUX_EGRESS_SOCKET", EGRESS_SOCKET))
        module = _import(src, _env("REFLUX_NODE_ENTRY", "node.py"))
        run = getattr(module, "run", None)
        if not callable(run):
            raise NodeFailure(
                "Expected the entry to define run(input, ctx), but it does not",
                error_class="NodeCodeError",
            )
        output = run(params, ctx)
        json.dumps(output)  # refuse what the worker could not read back
    except BaseException as exc:  # every failure becomes an answer
        if isinstance(exc, KeyboardInterrupt):
            raise
        return classify(exc, src=src, work=work)
    return {"ok": True, "output": output}


def run_tests() -> dict[str, Any]:
    src, work = _env("REFLUX_SRC", "/work/src"), _env("REFLUX_WORK", "/work")
    tests_file = _env("REFLUX_NODE_TESTS", "test_node.py")
    outcomes: list[dict[str, Any]] = []
    policy: str | None = None
    try:
        module = _import(src, tests_file)
    except BaseException as exc:
        answer = classify(exc, src=src, work=work)
        return {
            "tests": [
                {
                    "name": f"<import {tests_file}>",
                    "passed": False,
                    "message": f"{answer['error_class']}: {answer['message']}",
                    "duration_ms": 0.0,
                }
            ],
            "policy": None,
        }
    for name, function in list(vars(module).items()):
        if not name.startswith("test_") or not callable(function):
            continue
        started = time.monotonic()
        message = ""
        passed = True
        try:
            function()
        except AssertionError as exc:
            passed = False
            message = (
                f"AssertionError: {exc}{_where(exc, src)}"
                if str(exc)
                else (f"AssertionError{_where(exc, src)}")
            )
            found = policy_violation(exc, work)
            if found is not None and policy is None:
                policy = f"{found[0]}: {found[1]}"
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            passed = False
            answer = classify(exc, src=src, work=work)
            message = f"{answer['error_class']}: {answer['message']}"
            if answer["error_class"] in ("SandboxPolicy", "EgressDenied") and policy is None:
                policy = message
        outcomes.append(
            {
                "name": name,
                "passed": passed,
                "message": message,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            }
        )
    return {"tests": outcomes, "policy": policy}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mode = args[0] if args else _env("REFLUX_NODE_MODE", "run")
    out = _env("REFLUX_OUT", "/work/out")
    if mode == "run":
        _write(os.path.join(out, "result.json"), run_node())
        return 0
    if mode == "test":
        _write(os.path.join(out, "report.json"), run_tests())
        return 0
    print(f"usage: python -m reflux_node run|test (got {mode!r})", file=sys.stderr)
    return 2
