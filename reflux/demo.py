"""``reflux demo`` (``make demo``): a real multi-step workflow through the whole engine.

It starts, in this process, a stand-in supplier API on loopback, the engine (scheduler, workers,
projector, trigger router: :class:`reflux.dev.DevEngine`) and the HTTP API; then, as a user
would, it registers ``examples/order-quote.yaml`` through the API, starts two runs (one whose
condition calls the approval service, one that skips it), follows them and prints their
timelines from the API.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from api.auth.bootstrap import ensure_local_admin_key
from api.config import ApiSettings
from foundation.settings import PROJECT_ROOT, Settings, get_settings
from reflux.client import ClientError, _check, describe_event, timeline, wait_registered
from reflux.credentials import api_client, console_link, default_key_file
from reflux.demo_service import offers_service
from reflux.dev import DevEngine
from schemas.statuses import TERMINAL_RUN_STATUSES, RunStatus

WORKFLOW = PROJECT_ROOT / "examples" / "order-quote.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_api(settings: Settings, port: int) -> tuple[object, threading.Thread]:
    import uvicorn

    from api.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="reflux-demo-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise ClientError("the API did not start")
        time.sleep(0.05)
    return server, thread


def _follow(client: httpx.Client, run_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        response = client.get(f"/v1/runs/{run_id}/events", params={"after_seq": seen})
        if response.status_code == 200:
            for event in response.json()["data"]:
                print(f"     {describe_event(event)}", flush=True)
                seen = max(seen, event["seq"])
            status = client.get(f"/v1/runs/{run_id}").json()["status"]
            if status in TERMINAL_RUN_STATUSES:
                return str(status)
        time.sleep(0.1)
    return "timeout"


def run_demo(
    settings: Settings | None = None, workflow: Path = WORKFLOW, *, stay: bool = False
) -> int:
    """``stay``: keep the engine and the API (with the web console) up after the runs, until
    Ctrl-C, so the console can show them."""
    settings = settings or get_settings()
    with offers_service() as service:
        # The supplier stand-in listens on loopback, which the egress policy denies: the demo's
        # operator allows exactly its host:port (docs/nodes.md#security).
        settings = settings.model_copy(
            update={"egress_allow": (*settings.egress_allow, urlsplit(service).netloc)}
        )
        return _run_demo(settings, workflow, service, stay=stay)


def _run_demo(settings: Settings, workflow: Path, service: str, *, stay: bool) -> int:
    print(f"1. Starting the engine (scheduler, workers, projector) on {settings.kafka_bootstrap}")
    engine = DevEngine(settings, register_nodes=True).start()
    port = _free_port()
    server, thread = _serve_api(settings, port)
    key_file, created = ensure_local_admin_key(settings, ApiSettings(), default_key_file(settings))
    print(
        f"   API key (role admin) {'created in' if created else 'reused from'} {key_file} "
        "(mode 0600): the reflux CLI sends it; or export REFLUX_API_KEY=$(cat that file)"
    )
    ok = True
    try:
        with api_client(f"http://127.0.0.1:{port}", timeout=30) as client:
            print(f"2. API on http://127.0.0.1:{port}; supplier API (demo stand-in) on {service}")
            console = console_link(f"http://127.0.0.1:{port}", sign_in=sys.stdout.isatty())
            print(f"   Web console: {console}")
            registered = _check(
                client.post(
                    "/v1/workflows",
                    content=workflow.read_bytes(),
                    headers={"content-type": "application/yaml"},
                )
            )
            print(
                f"3. Registered {registered['workflow_id']} version {registered['version']} "
                f"from {workflow.relative_to(PROJECT_ROOT)}"
            )
            wait_registered(client, registered["workflow_id"], registered["version"])
            for n, city in enumerate(["Lyon", "Nantes"], start=4):
                body = {
                    "workflow_id": registered["workflow_id"],
                    "version": registered["version"],
                    "inputs": {"city": city, "quantity": 12, "service": service},
                    "idempotency_key": f"demo-{city}-{uuid.uuid4().hex[:8]}",
                }
                accepted = _check(client.post("/v1/runs", json=body))
                print(f"{n}. Run for {city}: {accepted['run_id']} accepted; following its events")
                status = _follow(client, accepted["run_id"])
                print()
                print(timeline(client, accepted["run_id"]))
                print()
                ok = ok and status == RunStatus.SUCCEEDED
        if stay:
            print(f"The engine and the API stay up: {console} (Ctrl-C ends the demo)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(10)
        engine.stop()
    print("demo", "OK" if ok else "FAILED")
    return 0 if ok else 1
