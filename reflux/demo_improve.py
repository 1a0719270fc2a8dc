"""``reflux demo improve`` (``make demo-improve``): the learning loop end to end, as a story.

In this process: a flaky HTTP dependency on loopback (:mod:`reflux.flaky_service`), the whole
engine with the learning loop (:class:`reflux.dev.DevEngine` with the critic, optimizer, canary
judge and historian, proposals validated by A/B replay) on its own topic prefix and Postgres
schema, and the HTTP API. As a user would, it registers a workflow that GETs a quote from the
dependency, sets its improvement policy to ``auto`` and sends steady traffic through the API.
Then the dependency degrades (transient 503s from 2% to 30%) and the demo only watches:

critic diagnosis -> optimizer proposal -> A/B replay verdict -> canary applied -> judge keeps
-> success recovers,

each printed with its time and numbers as it shows up in the API. Every stage has a bound; one
that does not happen within it ends the demo with a non-zero exit and says which. The topics
and schemas are removed at the end (``--keep`` leaves them for a look with the CLI).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psycopg

from foundation.errors import RefluxError
from foundation.settings import Settings, get_settings
from reflux.client import ClientError, _check, wait_registered
from reflux.flaky_service import FlakyService, flaky_service
from reflux.mutations_cli import describe_mutation

__all__ = ["StoryConfig", "StoryError", "loop_workflow", "run_demo_improve"]

T = TypeVar("T")
WORKFLOW_ID = "quote-check"


class StoryError(RefluxError):
    """A stage did not happen within its bound."""

    error_class = "DemoStageMissed"


@dataclass(frozen=True)
class StoryConfig:
    rate_per_s: float = 12.0
    """Runs started per second, steadily (traffic, never waiting for runs to end)."""
    healthy_runs: int = 100
    """Runs before the dependency degrades: the replay's and the critic's baseline."""
    error_before: float = 0.02
    error_after: float = 0.30
    runs_after_kept: int = 100
    """Runs started after the judge kept the fix, to measure the recovery."""
    window: int = 50
    seed: int = 7
    bounds_s: dict[str, float] = field(
        default_factory=lambda: {
            "diagnosis": 45.0,
            "proposal": 30.0,
            "replay": 60.0,
            "applied": 30.0,
            "decision": 60.0,
            "drain": 60.0,
        }
    )


def loop_workflow(url: str, workflow_id: str = WORKFLOW_ID) -> dict[str, Any]:
    """A GET of a quote for ``inputs.item`` (no retry: the first version as written), then
    shape its price. Every run asks for its own item: the same inputs over and over would
    (rightly) make the critic see a cache candidate, which is another story."""
    return {
        "id": workflow_id,
        "description": "Fetch a supplier quote (reflux demo improve)",
        "inputs": {"item": {"type": "string", "required": True}},
        "steps": [
            {
                "id": "fetch_quote",
                "node": "http.request@^1",
                "params": {
                    "url": f"{url}/quote?item={{{{ inputs.item }}}}",
                    "method": "GET",
                    "timeout_s": 5,
                },
            },
            {
                "id": "price",
                "node": "transform@^1",
                "needs": ["fetch_quote"],
                "params": {
                    "expression": "p",
                    "data": {"p": "{{ steps.fetch_quote.output.body.price }}"},
                },
            },
        ],
        "outputs": {"price": "{{ steps.price.output.result }}"},
    }


# -- narration ----------------------------------------------------------------------------------


class Timeline:
    def __init__(self) -> None:
        self.began = time.monotonic()

    def say(self, stage: str, text: str) -> None:
        now = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        first, *rest = text.split("\n")
        print(f"{now} +{time.monotonic() - self.began:6.1f}s  {stage:<10} {first}", flush=True)
        for line in rest:
            print(f"{'':<31}{line}", flush=True)


def _within(check: Callable[[], T | None], bound_s: float, stage: str, what: str) -> T:
    """Polls ``check`` (an API read) until it returns something, or fails the stage."""
    deadline = time.monotonic() + bound_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise StoryError(f"stage {stage!r}: {what} did not happen within {bound_s:.0f} s")
        time.sleep(0.2)  # polling the API's read models, which other threads write


# -- traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    index: int
    run_id: str
    phase: str


class Traffic:
    """Starts runs through ``POST /v1/runs`` at a steady rate in a thread; the version is left
    to the API's routing, so a canary gets its share of new runs."""

    def __init__(
        self,
        api_url: str,
        workflow_id: str,
        rate_per_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.api_url = api_url
        self.headers = dict(headers or {})
        self.workflow_id = workflow_id
        self.rate_per_s = rate_per_s
        self.phase = "healthy"
        self.runs: list[Submitted] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def count(self, phase: str | None = None) -> int:
        return sum(1 for r in list(self.runs) if phase is None or r.phase == phase)

    def _run(self) -> None:
        began = time.monotonic()
        try:
            with httpx.Client(base_url=self.api_url, timeout=30, headers=self.headers) as client:
                i = 0
                while not self._stop.is_set():
                    body = {"workflow_id": self.workflow_id, "inputs": {"item": f"sku-{i}"}}
                    accepted = _check(client.post("/v1/runs", json=body))
                    self.runs.append(Submitted(i, str(accepted["run_id"]), self.phase))
                    i += 1
                    self._stop.wait(max(0.0, began + i / self.rate_per_s - time.monotonic()))
        except BaseException as exc:  # reported by the story, which then stops
            self.error = exc


def _runs_by_id(client: httpx.Client, workflow_id: str) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"workflow_id": workflow_id, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = _check(client.get("/v1/runs", params=params))
        for run in page["data"]:
            found[run["run_id"]] = (run["status"], int(run["workflow_version"]))
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def window_table(
    runs: list[Submitted], finished: dict[str, tuple[str, int]], size: int
) -> list[dict[str, Any]]:
    """Success per window of ``size`` runs in start order, with the phase and versions."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(runs), size):
        chunk = runs[start : start + size]
        outcomes = [finished[r.run_id] for r in chunk if r.run_id in finished]
        done = [(s, v) for s, v in outcomes if s in {"succeeded", "failed"}]
        versions: dict[int, int] = {}
        for _, v in done:
            versions[v] = versions.get(v, 0) + 1
        rows.append(
            {
                "runs": f"{start + 1}-{start + len(chunk)}",
                "phase": "/".join(dict.fromkeys(r.phase for r in chunk)),
                "finished": len(done),
                "success": (sum(s == "succeeded" for s, _ in done) / len(done)) if done else None,
                "versions": versions,
            }
        )
    return rows


# -- the engine ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _api(settings: Settings, schema: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The API's URL and the headers of an admin key created for this demo (ADR 0046)."""
    import uvicorn

    from api.app import create_app
    from api.auth.bootstrap import create_api_key
    from api.auth.roles import Role
    from api.config import ApiSettings

    api_settings = ApiSettings(
        read_schema=schema, api_schema=f"{schema}_api", clickhouse_enabled=False
    )
    _, key = create_api_key(
        settings, api_settings, name="demo-improve", role=Role.ADMIN, created_by="demo"
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, api_settings), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="demo-improve-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise ClientError("the API did not start")
        time.sleep(0.05)  # waiting for uvicorn's own start flag
    try:
        yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    finally:
        server.should_exit = True
        thread.join(10)


def _allowing(settings: Settings, url: str) -> Settings:
    return settings.model_copy(
        update={"egress_allow": (*settings.egress_allow, urlsplit(url).netloc)}
    )


@contextlib.contextmanager
def _engine(settings: Settings, schema: str) -> Iterator[Any]:
    from processors.canary.judge import CanaryConfig
    from reflux.dev import DevEngine

    engine = DevEngine(
        settings,
        schema=schema,
        trigger_router=False,
        critic=True,
        optimizer=True,
        canary=True,
        canary_config=CanaryConfig(min_runs=10, max_runs=120),
        historian=True,
    ).start()
    try:
        yield engine
    finally:
        engine.stop()


def _cleanup(settings: Settings, schema: str) -> None:
    from streams.admin import admin_client

    with contextlib.suppress(Exception):
        admin = admin_client(settings)
        prefix = settings.topic_prefix + "."
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        futures = admin.delete_topics(topics, operation_timeout=30) if topics else {}
        for future in futures.values():
            with contextlib.suppress(Exception):
                future.result(30)
    with (
        contextlib.suppress(Exception),
        psycopg.connect(settings.postgres_dsn, autocommit=True) as conn,
    ):
        for name in (schema, f"{schema}_api"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# -- the story ----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_windows(say: Callable[[str, str], None], rows: list[dict[str, Any]]) -> None:
    lines = ["runs       phase                    finished  success  versions"]
    for row in rows:
        versions = " ".join(f"v{v}:{n}" for v, n in sorted(row["versions"].items()))
        lines.append(
            f"{row['runs']:<10} {row['phase']:<24} {row['finished']:>8}  "
            f"{_pct(row['success']):>7}  {versions}"
        )
    say("windows", "\n".join(lines))


class _Story:
    """The stages, in order; each waits for its record in the API within its bound."""

    def __init__(
        self,
        client: httpx.Client,
        api_url: str,
        service: FlakyService,
        config: StoryConfig,
        tl: Timeline,
    ) -> None:
        self.client = client
        self.api_url = api_url
        self.service = service
        self.config = config
        self.bounds = config.bounds_s
        self.tl = tl
        self.traffic = Traffic(api_url, WORKFLOW_ID, config.rate_per_s, dict(client.headers))
        self.mutation_id = ""

    def get(self, path: str, **params: Any) -> Any:
        return _check(self.client.get(path, params=params))

    def mutation(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get(f"/v1/mutations/{self.mutation_id}")
        return body

    def run(self) -> tuple[str, bool]:
        self.setup()
        self.traffic.start()
        try:
            self.healthy()
            self.diagnose(self.degrade())
            self.propose()
            self.replay()
            self.canary()
            kept = self.decision()
            self.after()
        finally:
            self.traffic.stop()
        if self.traffic.error:
            raise StoryError(f"traffic stopped: {self.traffic.error}")
        return self.mutation_id, self.report() and kept

    def setup(self) -> None:
        client = self.client
        registered = _check(client.post("/v1/workflows", json=loop_workflow(self.service.url)))
        wait_registered(client, WORKFLOW_ID, registered["version"])
        policy = {"policy": "auto", "wait_ms": 20_000}
        _check(client.put(f"/v1/workflows/{WORKFLOW_ID}/improvement", json=policy))
        self.tl.say(
            "setup",
            f"workflow {WORKFLOW_ID} v{registered['version']}: GET {self.service.url}/quote "
            "(no retry), then a transform; improvement policy auto",
        )

    def healthy(self) -> None:
        c = self.config
        self.tl.say(
            "traffic",
            f"{c.rate_per_s:.0f} runs/s through POST /v1/runs, each for its own item; "
            f"the dependency fails {c.error_before:.0%} of requests",
        )
        _within(
            lambda: True if self.traffic.count() >= c.healthy_runs or self.traffic.error else None,
            c.healthy_runs / c.rate_per_s + 30,
            "healthy",
            f"{c.healthy_runs} runs started",
        )

    def degrade(self) -> datetime:
        degraded_at = datetime.now(UTC)
        self.service.degrade(self.config.error_after)
        self.traffic.phase = "degraded"
        self.tl.say(
            "degrade",
            f"after {self.traffic.count()} runs the dependency starts failing "
            f"{self.config.error_after:.0%} of requests (HTTP 503)",
        )
        return degraded_at

    def diagnose(self, degraded_at: datetime) -> None:
        def diagnosis() -> dict[str, Any] | None:
            if self.traffic.error:
                raise StoryError(f"traffic stopped: {self.traffic.error}")
            rows = self.get("/v1/diagnoses", workflow_id=WORKFLOW_ID)["data"]
            found = [
                d
                for d in rows
                if d["kind"] in {"failure_drift", "error_cluster"}
                and d["step_id"] == "fetch_quote"
                and d["severity"] != "info"
            ]
            return min(found, key=lambda d: str(d["detected_at"])) if found else None

        first = _within(diagnosis, self.bounds["diagnosis"], "diagnosis", "a critic diagnosis")
        detail = self.get(f"/v1/diagnoses/{first['diagnosis_id']}")
        metrics = ", ".join(f"{k} {v:.3g}" for k, v in sorted(detail["metrics"].items()))
        took = (datetime.fromisoformat(detail["detected_at"]) - degraded_at).total_seconds()
        self.tl.say(
            "critic",
            f"{detail['kind']} ({detail['severity']}) on {detail['subject']}, "
            f"{self.traffic.count('degraded')} runs and {took:.1f} s after the change\n"
            f"{detail['explanation']}\nmetrics: {metrics}",
        )

    def propose(self) -> None:
        # The fix for failures is a retry policy; the optimizer may propose other things on
        # the way (a latency drift of a busy box -> a timeout), printed at the end.
        def proposal() -> dict[str, Any] | None:
            rows = self.get("/v1/mutations", workflow_id=WORKFLOW_ID)["data"]
            retries = [m for m in rows if m["author"] == "optimizer:retry"]
            return retries[-1] if retries else None

        listed = _within(proposal, self.bounds["proposal"], "proposal", "a retry proposal")
        self.mutation_id = str(listed["mutation_id"])
        m = self.mutation()
        evidence = m.get("evidence") or {}
        changes = "; ".join(
            f"{c['type']} {c['step_id']}"
            + (f" retry={json.dumps(c['data'].get('retry'))}" if c["data"].get("retry") else "")
            for c in m["changes"]
        )
        similar = ", ".join(
            f"{i.get('kind')} ({float(i.get('similarity') or 0):.2f})"
            for i in evidence.get("similar_incidents") or []
        )
        self.tl.say(
            "optimizer",
            f"proposal {self.mutation_id} by {m['author']} for diagnosis "
            f"{evidence.get('diagnosis_id')}\n{m['rationale']}\nchanges: {changes}\n"
            f"predicted effect: {json.dumps(evidence.get('predicted_effect'))}\n"
            f"similar incidents in the historian: {similar or 'none'}",
        )

    def _until_status(self, stage: str, statuses: set[str], what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            body = self.mutation()
            if body["status"] == "rejected":
                raise StoryError(f"stage {stage!r}: proposal rejected: {body.get('reason')}")
            return body if body["status"] in statuses else None

        return _within(check, self.bounds[stage], stage, what)

    def replay(self) -> None:
        m = self._until_status(
            "replay", {"validated", "approved", "applied", "kept", "rolled_back"}, "validation"
        )
        replay = (m.get("report") or {}).get("replay") or {}
        self.tl.say("replay", _describe_replay(self.client, replay))
        validated = [e for e in m["history"] if e["status"] == "validated"]
        self.tl.say("replay", f"validated: {validated[0]['reason']}")

    def canary(self) -> None:
        m = self._until_status("applied", {"applied", "kept", "rolled_back"}, "the canary apply")
        self.traffic.phase = "canary"
        self.tl.say(
            "canary",
            f"applied as v{m['applied_version']} to {m['canary_weight']:.0%} of new runs "
            f"(policy auto; previous v{m['previous_version']}), after run {self.traffic.count()}",
        )

    def decision(self) -> bool:
        m = self._until_status("decision", {"kept", "rolled_back"}, "the judge's decision")
        self.tl.say("judge", _describe_judge(m, m["report"]["canary"]))
        self.traffic.phase = "kept" if m["status"] == "kept" else "rolled back"
        return bool(m["status"] == "kept")

    def after(self) -> None:
        marker, n = self.traffic.count(), self.config.runs_after_kept
        _within(
            lambda: True if self.traffic.count() >= marker + n else None,
            n / self.config.rate_per_s + 30,
            "after",
            f"{n} runs after the decision",
        )

    def report(self) -> bool:
        """Waits for every run to end; prints the windows and the effect; whether the runs
        after the decision recovered (>= 97% success)."""
        runs = list(self.traffic.runs)
        ids = {r.run_id for r in runs}

        def drained() -> dict[str, tuple[str, int]] | None:
            found = _runs_by_id(self.client, WORKFLOW_ID)
            done = [k for k, v in found.items() if k in ids and v[0] in {"succeeded", "failed"}]
            return found if len(done) >= len(ids) else None

        finished = _within(drained, self.bounds["drain"], "drain", f"{len(runs)} runs ending")
        _print_windows(self.tl.say, window_table(runs, finished, self.config.window))
        phases: dict[str, list[str]] = {}
        for r in runs:
            phases.setdefault(r.phase, []).append(finished[r.run_id][0])
        lines = [
            f"{phase:<12} {len(s):>4} runs, success "
            f"{_pct(sum(x == 'succeeded' for x in s) / len(s))}"
            for phase, s in phases.items()
        ]
        stats = self.service.stats()
        lines.append(f"dependency: {stats.requests} requests, {stats.errors} answered 503")
        self.tl.say("effect", "\n".join(lines))
        others = [
            m
            for m in self.get("/v1/mutations", workflow_id=WORKFLOW_ID)["data"]
            if m["mutation_id"] != self.mutation_id
        ]
        if others:
            self.tl.say(
                "others",
                "\n".join(
                    f"{m['mutation_id']} by {m['author']}: {m['status']}"
                    + (f" ({m['reason']})" if m.get("reason") else "")
                    for m in reversed(others)
                ),
            )
        after = phases.get("kept", [])
        return bool(after) and sum(x == "succeeded" for x in after) / len(after) >= 0.97


def _describe_replay(client: httpx.Client, replay: dict[str, Any]) -> str:
    """The verdict and what it rests on (GET /v1/replays/{id}'s aggregate report)."""
    lines = [f"A/B replay {replay.get('replay_id')}: verdict {replay.get('verdict')}"]
    body = _check(client.get(f"/v1/replays/{replay['replay_id']}"))
    report = body.get("report") or {}
    comparison = report.get("comparison") or {}
    if comparison.get("reason"):
        lines.append(str(comparison["reason"]))
    outcomes = report.get("outcomes") or {}
    if outcomes:
        lines.append(
            f"{report.get('runs')} recorded runs of v1 re-executed with the candidate: "
            + ", ".join(f"{k} {v}" for k, v in outcomes.items())
        )
    success = comparison.get("success") or {}
    if success:
        shown = {k: v for k, v in success.items() if v is not None}
        lines.append("success: " + json.dumps(shown, sort_keys=True)[:300])
    steps = report.get("executed_steps_ms") or {}
    if steps:
        a, b = steps.get("original") or {}, steps.get("candidate") or {}
        lines.append(
            f"executed steps p50 {a.get('p50')} -> {b.get('p50')} ms, "
            f"p95 {a.get('p95')} -> {b.get('p95')} ms"
        )
    return "\n".join(lines)


def _describe_judge(m: dict[str, Any], canary: dict[str, Any]) -> str:
    effect = canary.get("effect") or {}
    base, cand = effect.get("baseline") or {}, effect.get("canary") or {}
    lines = [
        f"{canary.get('decision')} ({m['status']}) after {canary.get('canary_runs')} canary and "
        f"{canary.get('baseline_runs')} baseline runs: {m.get('reason')}",
        f"success v{canary.get('previous_version')} {_pct(base.get('success_rate'))} -> "
        f"v{canary.get('applied_version')} {_pct(cand.get('success_rate'))}; "
        f"p95 {base.get('p95_ms')} -> {cand.get('p95_ms')} ms",
    ]
    for name, s in ((canary.get("statistics") or {}).get("metrics") or {}).items():
        if isinstance(s, dict) and s.get("applicable", True) and s.get("ci_low") is not None:
            lines.append(
                f"  {name:<12} regression {s['regression_estimate']:+.3f} "
                f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}] margin {s.get('margin')} "
                f"always-valid p={s['always_valid_p']:.2g}"
            )
    return "\n".join(lines)


def run_demo_improve(
    settings: Settings | None = None, config: StoryConfig | None = None, keep: bool = False
) -> int:
    base = settings or get_settings()
    config = config or StoryConfig()
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(update={"topic_prefix": f"demo-improve-{tag}"})
    schema = f"demo_improve_{tag}"
    tl = Timeline()
    tl.say(
        "engine",
        f"starting the engine with the learning loop (critic, optimizer, replay, canary judge, "
        f"historian) on {settings.kafka_bootstrap}, topics {settings.topic_prefix}.*, "
        f"schema {schema}",
    )
    ok = False
    try:
        with (
            flaky_service(config.error_before, config.seed) as service,
            # The dependency listens on loopback, which the egress policy denies: the demo's
            # operator allows exactly its host:port (docs/nodes.md#security).
            _engine(_allowing(settings, service.url), schema) as engine,
            _api(settings, schema) as (api_url, auth),
            httpx.Client(base_url=api_url, timeout=30, headers=auth) as client,
        ):
            tl.say("engine", f"API on {api_url}; dependency on {service.url}")
            try:
                mutation_id, ok = _Story(client, api_url, service, config, tl).run()
            except StoryError as exc:
                errors = engine.errors()
                print(f"\ndemo improve FAILED: {exc}", flush=True)
                if errors:
                    print(f"engine component errors: {errors}", flush=True)
                return 1
            print(f"\n$ reflux mutations show {mutation_id}", flush=True)
            print(describe_mutation(_check(client.get(f"/v1/mutations/{mutation_id}"))))
    finally:
        if keep:
            print(f"kept: topics {settings.topic_prefix}.*, schemas {schema}, {schema}_api")
        else:
            _cleanup(settings, schema)
    print("\ndemo improve", "OK" if ok else "FAILED: the fix was not kept or success stayed low")
    return 0 if ok else 1
