"""The engine as separate ``reflux`` processes on one machine (``reflux dev --processes N``, the
benchmarks): each interpreter has its own GIL, so the components use every core.

:class:`ProcessEngine` starts ``schedulers`` scheduler processes, ``workers`` worker processes,
a projector and a trigger router (and optionally the API), each as ``reflux <command>``, or
under ``reflux supervise --`` (:mod:`reflux.supervision`) so one that dies comes back.

- Scheduler ``k`` runs as ``--instance-id <prefix>-k``: the instance id is stable across
  restarts, so a restarted scheduler keeps its transactional id (``<group>.<instance id>``) and
  its first ``init_transactions`` fences the zombie it replaces and aborts what that one left
  open (docs/decisions/0066-several-scheduler-processes.md). The schedulers share the run
  partitions through their consumer group.
- Every worker process serves the same nodes, so it joins the same consumer groups (one per
  node major version) and the group spreads the invoke partitions over the processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from foundation.settings import PROJECT_ROOT, Settings
from node_workers.registry import NodeRegistry, default_registry
from reflux.dev import prepare
from streams.topics import TopicCatalog

__all__ = ["ProcessEngine", "children_of", "component_env"]


def children_of(pid: int) -> list[int]:
    """Live (not zombie) child pids of ``pid``, read from /proc (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def component_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that points a ``reflux`` process at ``settings``' Kafka and topics (a
    ``Settings`` built in code, e.g. with a test's topic prefix, is not in the environment)."""
    env = dict(os.environ if base is None else base)
    env["REFLUX_TOPIC_PREFIX"] = settings.topic_prefix
    env["REFLUX_DEFAULT_PARTITIONS"] = str(settings.default_partitions)
    env["REFLUX_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    # A cluster's topics get its replication (and min.insync.replicas 2) whoever makes them.
    env["REFLUX_KAFKA_BROKERS"] = str(settings.kafka_brokers)
    env["REFLUX_REPLICATION_FACTOR"] = str(settings.replication_factor)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


class ProcessEngine:
    """Every component as its own ``reflux`` process; stdout/stderr of each into
    ``log_dir/<name>.log`` (by default a temporary folder, removed at :meth:`stop`).

    Component names: ``scheduler-0..``, ``worker-0..``, ``projector``, ``trigger-router``,
    ``api``; :meth:`pids` keys them ``"engine <name>"``."""

    def __init__(
        self,
        settings: Settings,
        *,
        schema: str,
        schedulers: int = 1,
        workers: int = 1,
        log_dir: Path | None = None,
        supervised: bool = False,
        api: bool = False,
        api_host: str = "127.0.0.1",
        api_port: int = 8080,
        projector: bool = True,
        trigger_router: bool = True,
        instance_prefix: str = "proc",
        worker_args: Sequence[str] = ("--catalog-status", "none"),
        nodes: NodeRegistry | None = None,
        max_backoff_s: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if schedulers < 0 or workers < 0:
            raise ValueError(f"Expected >= 0 schedulers and workers, got {schedulers}, {workers}")
        self.settings = settings
        self.schema = schema
        self.supervised = supervised
        self.max_backoff_s = max_backoff_s
        # Topics (with every served node's invoke topic) and read models exist before any
        # process starts: several processes creating them at once would race.
        self.catalog: TopicCatalog = prepare(settings, nodes or default_registry(), schema)
        # A folder of our own is removed at stop(); errors() quotes the logs before that.
        self._own_logs = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="reflux-processes-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.instance_ids = {f"scheduler-{k}": f"{instance_prefix}-{k}" for k in range(schedulers)}
        self.commands: dict[str, list[str]] = {
            **{
                name: ["scheduler", "--instance-id", instance]
                for name, instance in self.instance_ids.items()
            },
            **{f"worker-{k}": ["worker", *worker_args] for k in range(workers)},
        }
        if projector:
            self.commands["projector"] = ["projector", "--schema", schema]
        if trigger_router:
            self.commands["trigger-router"] = ["trigger-router"]
        if api:
            self.commands["api"] = ["api", "--host", api_host, "--port", str(api_port)]
        self._env = component_env(settings, env)
        # The API reads this engine's read models and keeps its keys beside them.
        self._env.setdefault("REFLUX_API_READ_SCHEMA", schema)
        self._env.setdefault("REFLUX_API_API_SCHEMA", f"{schema}_api")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._scanned: dict[str, tuple[int, list[str]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ProcessEngine:
        for name, args in self.commands.items():
            # `reflux supervise`, without loading the whole CLI for a supervisor.
            command = (
                ["reflux.supervision", "--max-backoff", str(self.max_backoff_s), "--", *args]
                if self.supervised
                else ["reflux.cli", *args]
            )
            with (self.log_dir / f"{name}.log").open("wb") as out:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", *command],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self._env,
                    cwd=PROJECT_ROOT,
                )
        return self

    def wait_started(self, timeout: float = 60.0) -> dict[str, int]:
        """Supervised: until every supervisor has started its component (their pids)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            pending = [n for n, p in self.processes.items() if pids[f"engine {n}"] == p.pid]
            if not self.supervised or not pending:
                return pids
            dead = self.errors()
            if dead:
                raise RuntimeError(f"Expected every component to start, but: {dead}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Expected {pending} to start within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every process (a supervisor passes it on to its component), SIGKILL to
        what is left after ``timeout`` -- the supervised components too, which run in their own
        sessions and would outlive a killed supervisor."""
        components = {name: children_of(p.pid) for name, p in self.processes.items()}
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in self.processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                components[name] += children_of(process.pid)
                process.kill()
                process.wait(10)
                for pid in components[name]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.processes.clear()
        if self._own_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> ProcessEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what runs ---------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """``"engine <name>"`` -> the pid of the process doing the work: the supervised child
        when supervised (the supervisor's own while it has none), else the process started."""
        found = {}
        for name, process in self.processes.items():
            pid = process.pid
            if self.supervised:
                children = children_of(process.pid)
                pid = children[0] if children else pid
            found[f"engine {name}"] = pid
        return found

    def supervisor_pids(self) -> dict[str, int]:
        """The processes started (the supervisors when supervised), by component name."""
        return {name: p.pid for name, p in self.processes.items()}

    def describe(self) -> list[str]:
        """One line per component: name, pid, instance id (schedulers), log file."""
        pids = self.pids()
        lines = []
        for name in self.processes:
            instance = self.instance_ids.get(name)
            what = f" instance {instance}" if instance else ""
            lines.append(
                f"{name:<15} pid {pids[f'engine {name}']:<8}{what} (log {self.log_dir}/{name}.log)"
            )
        return lines

    def errors(self) -> dict[str, str]:
        """Components whose process ended (none should while the engine runs) and, when
        supervised, components that died and were started again (the supervisor's line)."""
        found = {}
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                found[name] = f"exited {code}; log tail: {self._tail(name)}"
                continue
            if self.supervised:
                deaths = self._deaths(name)
                if deaths:
                    found[name] = f"restarted {len(deaths)} time(s); last: {deaths[-1]}"
        return found

    def _deaths(self, name: str) -> list[str]:
        """The supervisor's "died after" lines in the component's log, read incrementally (a
        benchmark asks every few seconds; the logs grow)."""
        offset, deaths = self._scanned.get(name, (0, []))
        with contextlib.suppress(OSError), (self.log_dir / f"{name}.log").open("rb") as log:
            log.seek(offset)
            chunk = log.read()
            # Only whole lines: a line being written is read next time.
            whole = chunk[: chunk.rfind(b"\n") + 1]
            deaths = deaths + _DIED.findall(whole.decode(errors="replace"))
            offset += len(whole)
        self._scanned[name] = (offset, deaths)
        return deaths

    def _tail(self, name: str, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        return ""


_DIED = re.compile(r"^.* died after .*$", re.MULTILINE)
"""The line :class:`reflux.supervision.Supervisor` logs when its component dies."""
