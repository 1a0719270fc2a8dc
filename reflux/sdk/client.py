"""``RefluxClient`` (sync) and ``AsyncRefluxClient`` (asyncio): the API for Python programs.

Both build the same requests (:class:`_Calls`, one place) and differ only in how they send
them. The API key comes from the ``api_key`` argument, else ``REFLUX_API_KEY``, else the key
file the CLI reads (:mod:`reflux.credentials`); the base URL from ``base_url``, else
``REFLUX_API_URL``. Errors are typed (:mod:`reflux.sdk.errors`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from foundation.errors import RefluxError
from foundation.settings import Settings
from reflux.credentials import api_key as configured_api_key
from reflux.sdk.builder import Workflow
from reflux.sdk.errors import raise_for_response
from schemas.statuses import TERMINAL_RUN_STATUSES

__all__ = ["AsyncRefluxClient", "RefluxClient", "WaitTimeoutError", "WorkflowSource"]

WorkflowSource = Workflow | Mapping[str, Any] | str
"""What ``register_workflow`` takes: a builder, a definition dict, or YAML/JSON text."""


class WaitTimeoutError(RefluxError):
    """A wait gave up: ``wait_run``'s run had not ended (``run`` is how far it got, None when
    not visible yet), or ``register_workflow``'s version was still not readable."""

    error_class = "WaitTimeout"

    def __init__(self, message: str, run: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.run = run


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _not_visible(created: Mapping[str, Any], waited: float) -> str:
    return (
        f"{created['workflow_id']} version {created['version']} was registered but is still not "
        f"readable after {waited:g}s; is the projector running?"
    )


def _not_ended(run_id: str, waited: float, run: Mapping[str, Any] | None) -> str:
    status = run["status"] if run else "not visible yet"
    return f"run {run_id} is still {status} after {waited:g}s"


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class _Calls:
    """Every request the clients make, as data."""

    @staticmethod
    def register(source: WorkflowSource) -> _Call:
        if isinstance(source, Workflow):
            return _Call("POST", "/v1/workflows", json=source.to_definition())
        if isinstance(source, str):
            headers = {"content-type": "application/yaml"}  # JSON is YAML
            return _Call("POST", "/v1/workflows", content=source.encode(), headers=headers)
        return _Call("POST", "/v1/workflows", json=dict(source))

    @staticmethod
    def workflow_version(workflow_id: str, version: int) -> _Call:
        return _Call("GET", f"/v1/workflows/{workflow_id}/versions/{version}")

    @staticmethod
    def start(
        workflow_id: str,
        inputs: Mapping[str, Any] | None,
        version: int | None,
        idempotency_key: str | None,
        wait_ms: int | None,
    ) -> _Call:
        body = _drop_none(
            {
                "workflow_id": workflow_id,
                "version": version,
                "inputs": dict(inputs or {}),
                "wait_ms": wait_ms,
            }
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return _Call("POST", "/v1/runs", json=body, headers=headers)

    @staticmethod
    def get_run(run_id: str) -> _Call:
        return _Call("GET", f"/v1/runs/{run_id}")

    @staticmethod
    def list_runs(
        workflow_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> _Call:
        params = _drop_none(
            {"workflow_id": workflow_id, "status": status, "limit": limit, "cursor": cursor}
        )
        return _Call("GET", "/v1/runs", params=params)

    @staticmethod
    def events(run_id: str, after_seq: int | None) -> _Call:
        return _Call(
            "GET", f"/v1/runs/{run_id}/events", params=_drop_none({"after_seq": after_seq})
        )

    @staticmethod
    def stream(run_id: str, after_seq: int | None) -> _Call:
        params = _drop_none({"after_seq": after_seq})
        return _Call("GET", f"/v1/runs/{run_id}/stream", params=params)

    @staticmethod
    def command(
        path: str,
        wait_ms: int | None,
        reason: str | None,
        requested_by: str | None,
        **extra: Any,
    ) -> _Call:
        body = _drop_none({"reason": reason, "requested_by": requested_by, **extra})
        return _Call("POST", path, params=_drop_none({"wait_ms": wait_ms}), json=body)


def _resolve(
    base_url: str | None, api_key: str | None, headers: Mapping[str, str] | None
) -> tuple[str, dict[str, str]]:
    settings = Settings() if base_url is None or api_key is None else None
    url = base_url or (settings.api_url if settings else "")
    key = api_key or configured_api_key(settings)
    merged = {"Authorization": f"Bearer {key}"} if key else {}
    return url, {**merged, **(headers or {})}


def _body(response: httpx.Response) -> Any:
    raise_for_response(response)
    return response.json() if response.content else None


def _sse_events(lines: Iterable[str], state: list[str]) -> Iterator[dict[str, Any]]:
    """Complete SSE events' ``data`` (run events as JSON) from lines; ``state`` carries the
    data lines of an event not yet ended by a blank line."""
    for line in lines:
        if line == "":
            if state:
                data = "\n".join(state)
                state.clear()
                yield dict(json.loads(data))
        elif line.startswith("data:"):
            state.append(line[6:] if line[5:6] == " " else line[5:])  # one space, per SSE
        # id:, event:, retry: and ":" comments (pings): the data carries seq and event_type


class RefluxClient:
    """The API, synchronously. Use as a context manager (or call :meth:`close`)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, merged = _resolve(base_url, api_key, headers)
        self._http = httpx.Client(
            base_url=url, headers=merged, timeout=timeout, transport=transport
        )

    def __enter__(self) -> RefluxClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call, timeout: float | None = None) -> Any:
        response = self._http.request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            content=call.content,
            headers=call.headers,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        return _body(response)

    def register_workflow(
        self, source: WorkflowSource, *, wait_visible: float = 15.0
    ) -> dict[str, Any]:
        """Register a version; returns ``{"workflow_id", "version", ...}``. Registration goes
        through Kafka to the read model: wait up to ``wait_visible`` s until runs can start
        on it (0: do not wait)."""
        created: dict[str, Any] = self._send(_Calls.register(source))
        deadline = time.monotonic() + wait_visible
        call = _Calls.workflow_version(created["workflow_id"], created["version"])
        while wait_visible > 0:
            response = self._http.request(call.method, call.path)
            if response.status_code != 404:
                raise_for_response(response)
                break
            if time.monotonic() > deadline:
                raise WaitTimeoutError(_not_visible(created, wait_visible))
            time.sleep(0.05)
        return created

    def start_run(
        self,
        workflow_id: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        idempotency_key: str | None = None,
        wait_ms: int | None = None,
    ) -> dict[str, Any]:
        """``{"run_id", ...}`` (202), or with ``wait_ms`` the finished run when it ended in
        time. The same ``idempotency_key`` yields the same run."""
        call = _Calls.start(workflow_id, inputs, version, idempotency_key, wait_ms)
        result: dict[str, Any] = self._send(call, _timeout(self._http, wait_ms))
        return result

    def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._send(_Calls.get_run(run_id))
        return result

    def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page, newest first: ``{"data": [...], "next_cursor": ...}``."""
        result: dict[str, Any] = self._send(_Calls.list_runs(workflow_id, status, limit, cursor))
        return result

    def events(self, run_id: str, *, after_seq: int | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._send(_Calls.events(run_id, after_seq))["data"]
        return result

    def wait_run(self, run_id: str, *, timeout: float = 60.0, poll: float = 0.1) -> dict[str, Any]:
        """The run once it has ended (succeeded, failed, cancelled, ...); :class:`WaitTimeoutError`
        if it has not after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        run: dict[str, Any] | None = None
        while True:
            response = self._http.get(f"/v1/runs/{run_id}")
            if response.status_code != 404:  # 404: not projected yet
                run = _body(response)
                if run is not None and run["status"] in TERMINAL_RUN_STATUSES:
                    return run
            if time.monotonic() > deadline:
                raise WaitTimeoutError(_not_ended(run_id, timeout, run), run)
            time.sleep(poll)

    def stream_events(
        self, run_id: str, *, after_seq: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The run's events (SSE), replayed from ``after_seq`` then followed until it ends."""
        call = _Calls.stream(run_id, after_seq)
        with self._http.stream("GET", call.path, params=call.params, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise_for_response(response)
            yield from _sse_events(response.iter_lines(), [])

    def signal(
        self,
        run_id: str,
        name: str,
        payload: Any = None,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        call = _Calls.command(
            f"/v1/runs/{run_id}/signals/{name}", wait_ms, reason, requested_by, payload=payload
        )
        result: dict[str, Any] = self._send(call, _timeout(self._http, wait_ms))
        return result

    def _lifecycle(
        self, action: str, run_id: str, wait_ms: int | None, reason: str | None, by: str | None
    ) -> dict[str, Any]:
        call = _Calls.command(f"/v1/runs/{run_id}/{action}", wait_ms, reason, by)
        result: dict[str, Any] = self._send(call, _timeout(self._http, wait_ms))
        return result

    def cancel(
        self,
        run_id: str,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        return self._lifecycle("cancel", run_id, wait_ms, reason, requested_by)

    def pause(
        self,
        run_id: str,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        return self._lifecycle("pause", run_id, wait_ms, reason, requested_by)

    def resume(
        self,
        run_id: str,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        return self._lifecycle("resume", run_id, wait_ms, reason, requested_by)

    def redrive(
        self,
        run_id: str,
        step_id: str,
        *,
        downstream: bool = False,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Re-run a failed step, or (``downstream``) a step and everything after it."""
        call = _Calls.command(
            f"/v1/runs/{run_id}/steps/{step_id}/redrive",
            wait_ms,
            reason,
            requested_by,
            downstream=downstream,
        )
        result: dict[str, Any] = self._send(call, _timeout(self._http, wait_ms))
        return result


def _timeout(http: httpx.Client | httpx.AsyncClient, wait_ms: int | None) -> float | None:
    """A request that waits server-side needs that much more time on the client."""
    if not wait_ms:
        return None
    base = http.timeout.read or 30.0
    return base + wait_ms / 1000


class AsyncRefluxClient:
    """The API for asyncio programs; the same methods as :class:`RefluxClient`, awaited.
    Use as ``async with`` (or await :meth:`aclose`)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, merged = _resolve(base_url, api_key, headers)
        self._http = httpx.AsyncClient(
            base_url=url, headers=merged, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncRefluxClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call, timeout: float | None = None) -> Any:
        response = await self._http.request(
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            content=call.content,
            headers=call.headers,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        return _body(response)

    async def register_workflow(
        self, source: WorkflowSource, *, wait_visible: float = 15.0
    ) -> dict[str, Any]:
        created: dict[str, Any] = await self._send(_Calls.register(source))
        deadline = time.monotonic() + wait_visible
        call = _Calls.workflow_version(created["workflow_id"], created["version"])
        while wait_visible > 0:
            response = await self._http.request(call.method, call.path)
            if response.status_code != 404:
                raise_for_response(response)
                break
            if time.monotonic() > deadline:
                raise WaitTimeoutError(_not_visible(created, wait_visible))
            await anyio.sleep(0.05)
        return created

    async def start_run(
        self,
        workflow_id: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        idempotency_key: str | None = None,
        wait_ms: int | None = None,
    ) -> dict[str, Any]:
        call = _Calls.start(workflow_id, inputs, version, idempotency_key, wait_ms)
        result: dict[str, Any] = await self._send(call, _timeout(self._http, wait_ms))
        return result

    async def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._send(_Calls.get_run(run_id))
        return result

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        call = _Calls.list_runs(workflow_id, status, limit, cursor)
        result: dict[str, Any] = await self._send(call)
        return result

    async def events(self, run_id: str, *, after_seq: int | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._send(_Calls.events(run_id, after_seq)))["data"]
        return result

    async def wait_run(
        self, run_id: str, *, timeout: float = 60.0, poll: float = 0.1
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] | None = None
        while True:
            response = await self._http.get(f"/v1/runs/{run_id}")
            if response.status_code != 404:
                run = _body(response)
                if run is not None and run["status"] in TERMINAL_RUN_STATUSES:
                    return run
            if time.monotonic() > deadline:
                raise WaitTimeoutError(_not_ended(run_id, timeout, run), run)
            await anyio.sleep(poll)

    async def stream_events(
        self, run_id: str, *, after_seq: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """``async for event in client.stream_events(run_id)``: the run's events (SSE),
        replayed from ``after_seq`` then followed until the run ends."""
        call = _Calls.stream(run_id, after_seq)
        async with self._http.stream(
            "GET", call.path, params=call.params, timeout=None
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for_response(response)
            state: list[str] = []
            async for line in response.aiter_lines():
                for event in _sse_events([line], state):
                    yield event

    async def signal(
        self,
        run_id: str,
        name: str,
        payload: Any = None,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        call = _Calls.command(
            f"/v1/runs/{run_id}/signals/{name}", wait_ms, reason, requested_by, payload=payload
        )
        result: dict[str, Any] = await self._send(call, _timeout(self._http, wait_ms))
        return result

    async def _lifecycle(
        self, action: str, run_id: str, wait_ms: int | None, reason: str | None, by: str | None
    ) -> dict[str, Any]:
        call = _Calls.command(f"/v1/runs/{run_id}/{action}", wait_ms, reason, by)
        result: dict[str, Any] = await self._send(call, _timeout(self._http, wait_ms))
        return result

    async def cancel(
        self,
        run_id: str,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        return await self._lifecycle("cancel", run_id, wait_ms, reason, requested_by)

    async def pause(
        self,
        run_id: str,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        return await self._lifecycle("pause", run_id, wait_ms, reason, requested_by)

    async def resume(
        self,
        run_id: str,
        *,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        return await self._lifecycle("resume", run_id, wait_ms, reason, requested_by)

    async def redrive(
        self,
        run_id: str,
        step_id: str,
        *,
        downstream: bool = False,
        wait_ms: int | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        call = _Calls.command(
            f"/v1/runs/{run_id}/steps/{step_id}/redrive",
            wait_ms,
            reason,
            requested_by,
            downstream=downstream,
        )
        result: dict[str, Any] = await self._send(call, _timeout(self._http, wait_ms))
        return result
