"""One artifact job in the ``code.run`` sandbox: lay out the job folder, run, read the answer.

The job folder (a :class:`~node_workers.sandbox.workdir.RunDirectory`) holds

    work/.reflux/boot.py, work/.reflux/reflux_node/   the guest package (node_workers/artifacts/
                                                       guest), copied from the worker's own tree
    work/src/<files>                                   the artifact's code and tests
    in/input.json, in/secrets.json                     read-only at /work/in
    egress.sock                                        the egress proxy's socket, when the node
                                                       declares egress (bound at
                                                       /run/reflux/egress.sock)

and the guest answers in ``work/out/result.json`` (``run``) or ``report.json`` (``test``). The job
always has ``network: off``: the only way out is the proxy's socket. Backends: whatever the
runner picks (Docker where an engine runs, else bubblewrap); the proxy socket is bound from the
worker's file system, so with Docker the engine must be local.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from foundation.settings import Settings
from node_workers.artifacts.bundle import ArtifactLimits, NodeArtifact
from node_workers.sandbox import Limits, SandboxConfig, SandboxJob, SandboxRunner, resource_limits
from node_workers.sandbox.workdir import RunDirectory, read_regular_file

__all__ = [
    "EGRESS_SOCKET",
    "GUEST_DIR",
    "ArtifactSandbox",
    "EgressFactory",
    "GuestRun",
    "bounded_limits",
]

GUEST_DIR: Final = Path(__file__).resolve().parent / "guest" / "reflux_node"
EGRESS_SOCKET: Final = "/run/reflux/egress.sock"
_BOOT: Final = (
    'import runpy\nrunpy.run_module("reflux_node", run_name="__main__", alter_sys=True)\n'
)
_MAX_ANSWER_BYTES: Final = 8 * 1024 * 1024

Mode = Literal["run", "test"]
EgressFactory = Callable[[Path], contextlib.AbstractContextManager[Path]]
"""Given the job folder, serve the egress proxy on a socket in it while the job runs."""


@dataclass(frozen=True, slots=True)
class GuestRun:
    """What one job left: the guest's answer (``None`` if it wrote none) and how it ended."""

    answer: dict[str, Any] | None
    logs: str
    duration_ms: float
    exit_code: int
    timed_out: bool
    backend: str
    problem: str | None = None
    """Why there is no answer (killed, timed out, crashed), in words."""


def bounded_limits(limits: ArtifactLimits, config: SandboxConfig, *, timeout_s: float) -> Limits:
    """The manifest's limits, each bounded by the worker's maximum (never refused: an artifact
    asking for more than this worker allows gets what it allows)."""
    return Limits(
        cpu=min(limits.cpu, config.max_cpu),
        memMb=min(limits.memory_mb, config.max_mem_mb),
        timeoutSec=max(min(timeout_s, config.max_timeout_sec), 0.1),
        network="off",
        processes=min(64, config.max_processes),
    )


def _guest_files() -> dict[str, bytes]:
    return {
        f".reflux/reflux_node/{path.name}": path.read_bytes()
        for path in sorted(GUEST_DIR.glob("*.py"))
    }


class ArtifactSandbox:
    """Runs artifact jobs; cheap to build (the backend is chosen on the first job)."""

    def __init__(self, settings: Settings, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig.from_settings(settings)
        self.runner = SandboxRunner(self.config, settings=settings)
        self._guest = _guest_files()

    def backend_name(self) -> str:
        return self.runner.backend().name

    def run_job(
        self,
        artifact: NodeArtifact,
        *,
        mode: Mode,
        params: Any = None,
        secrets: dict[str, str] | None = None,
        timeout_s: float | None = None,
        egress: EgressFactory | None = None,
        cancel: threading.Event | None = None,
    ) -> GuestRun:
        """Run the artifact's ``run`` (``mode="run"``) or its tests (blocking)."""
        config = self.config
        backend = self.runner.backend()
        limits = resource_limits(
            bounded_limits(
                artifact.manifest.limits,
                config,
                timeout_s=timeout_s or artifact.manifest.limits.timeout_s,
            ),
            config,
        )
        directory = RunDirectory(config)
        try:
            directory.write_entry(".reflux/boot.py", _BOOT.encode())
            for name, data in self._guest.items():
                directory.write_entry(name, data)
            for name, text in artifact.files.items():
                directory.write_entry(f"src/{name}", text.encode())
            if mode == "run":
                directory.write_input("input.json", json.dumps(params).encode())
                directory.write_input("secrets.json", json.dumps(secrets or {}).encode())
            env = {
                "PYTHONPATH": "/work/.reflux:/work/src",
                "REFLUX_NODE_MODE": mode,
                "REFLUX_NODE_ENTRY": artifact.entry,
                "REFLUX_NODE_TESTS": artifact.tests or "",
                "REFLUX_SRC": "/work/src",
                "REFLUX_WORK": "/work",
            }
            with contextlib.ExitStack() as stack:
                binds: tuple[tuple[Path, str], ...] = ()
                if egress is not None:
                    binds = ((stack.enter_context(egress(directory.root)), EGRESS_SOCKET),)
                job = SandboxJob(
                    lang="python",
                    entry=".reflux/boot.py",
                    network="off",
                    limits=limits,
                    host_work=directory.work,
                    host_inputs=directory.inputs,
                    env=env,
                    binds=binds,
                )
                raw = backend.run(job, cancel or threading.Event())
            name = "result.json" if mode == "run" else "report.json"
            answer, problem = _answer(job.host_out / name)
            if raw.timed_out:
                problem = (
                    f"Expected the node to finish within {limits.wall_timeout_s:g}s, but it did "
                    "not; the sandbox was killed"
                )
                answer = None
            elif raw.killed_reason is not None:
                problem, answer = f"{raw.killed_reason}: {raw.killed_message}", None
            elif answer is None:
                problem = f"the sandbox exited with {raw.exit_code} without an answer ({problem})"
            return GuestRun(
                answer=answer,
                logs=raw.logs,
                duration_ms=raw.duration_ms,
                exit_code=raw.exit_code,
                timed_out=raw.timed_out,
                backend=backend.name,
                problem=problem,
            )
        finally:
            directory.remove()

    def close(self) -> None:
        self.runner.close()


def _answer(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        return None, f"no {path.name}"
    except OSError as exc:
        return None, f"{path.name} unreadable: {exc}"
    if len(data) > _MAX_ANSWER_BYTES:
        return None, f"{path.name} has {len(data)} bytes, more than {_MAX_ANSWER_BYTES}"
    try:
        value = json.loads(data)
    except ValueError as exc:
        return None, f"{path.name} is not JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"{path.name} is not a JSON object"
    return value, None
