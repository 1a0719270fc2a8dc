"""The Docker backend (the ``docker`` SDK): one container per run, same contract as bubblewrap.

Tested against a real engine: tests/integration/test_code_run.py runs the same contract suite
on both backends, here against the project's own dockerd (``make up``, infra/services/docker.py,
``Settings.resolved_docker_host()``). The image is ``SandboxConfig.image``, by default the one
``make up`` builds from a debootstrap root file system (``reflux-sandbox:<hash>``,
node_workers/sandbox/docker_image/); it is never pulled.
Measurements: docs/decisions/0007-code-run-sandbox.md.

Files move through the engine's archive API rather than bind mounts, so the worker may itself
run in a container or talk to a remote engine: a fresh named volume is mounted at /work, the
entry and inputs are copied in with ``put_archive`` before start (``/work/in`` owned by root,
read-only for the sandbox user), and ``/work/out`` is copied back with ``get_archive`` (streamed,
capped) after the container exits.

The container: ``docker-init`` as pid 1 (reaps, like bwrap's init), then the peak-memory
launcher (bubblewrap.LAUNCHER, the image's python3) reporting on the container's stderr, then the
program with stderr joined to stdout, read through an attach opened before start (one ordered
log, no log driver: nothing is written to the engine's disk). Limits:

- the same rlimits as bubblewrap, as ulimits: RLIMIT_DATA = ``memMb`` (a MemoryError, not a
  kill, when the program allocates too much), RLIMIT_AS = ``memMb`` + 4 GiB, RLIMIT_FSIZE =
  output cap + 1, NOFILE, no core; RLIMIT_CPU only as a backstop, ``ceil(cpu * timeoutSec)`` + 1;
- cgroups on top: ``nano_cpus`` = ``cpu`` (a real quota: a busy loop gets ``cpu`` vCPUs, so it
  runs until the wall clock and ends as a timeout, where bubblewrap's CPU-seconds budget ends it
  earlier with SIGXCPU), ``pids_limit`` = ``processes`` (not RLIMIT_NPROC: without a user
  namespace it would count every process of the uid on the host, other sandboxes included),
  ``mem_limit`` = ``memswap_limit`` = ``memMb`` + /tmp + /dev/shm + 64 MiB, a bound on the
  whole container (all processes, tmpfs, page cache);
- read-only root, a /tmp tmpfs of the configured size, /dev/shm of the run's size
  (``shm_size``), the seccomp profile of seccomp.py (``security_opt``, replacing the engine's
  default profile), all capabilities dropped, ``no-new-privileges``, the unprivileged uid,
  ``network_mode`` none (host when network is allowed and requested: the engine has no bridge);
- the wall clock, cancel and the /work watchdog as under bubblewrap: the watchdog reads the
  volume's folder on this host (``Mountpoint``) with the same check. With a remote engine that
  folder is not visible: then only RLIMIT_FSIZE and the capped copy-out bound the outputs.
  Should the worker die mid-run, the launcher's alarm ends the container 30 s after its wall
  clock (what ``--die-with-parent`` does for bwrap); the stopped container and its volume stay
  until someone removes them (label ``io.reflux.sandbox``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import posixpath
import struct
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node_workers.sandbox.backend import BackendName, RawRun, SandboxJob
from node_workers.sandbox.bubblewrap import LAUNCHER, SANDBOX_TMP, program_command, sandbox_env
from node_workers.sandbox.errors import SandboxFailedError
from node_workers.sandbox.limits import IMAGE_INTERPRETERS, MIB, SandboxConfig
from node_workers.sandbox.logs import HeadTailBuffer
from node_workers.sandbox.seccomp import docker_security_opt
from node_workers.sandbox.workdir import directory_usage, work_overflow

__all__ = ["DockerBackend", "docker_client", "docker_problem"]

_LABEL: Final = "io.reflux.sandbox"
_LAUNCHER_PYTHON: Final = "/usr/bin/python3"
# The cgroup memory limit on top of memMb and /tmp: interpreters' own pages, page cache.
_MEMORY_HEADROOM: Final = 64 * MIB
# The engine's API calls (create, start, archive, remove); a wait or an attach has none.
_API_TIMEOUT_S: Final = 60.0
_WAIT_POLL_S: Final = 5
# How long after its wall clock a container whose worker died ends by itself.
_BACKSTOP_GRACE_S: Final = 30
_FRAME_HEADER: Final = struct.Struct(">BxxxL")
_STDERR: Final = 2
log = logging.getLogger(__name__)


def docker_client(base_url: str, timeout: float = 2.0) -> Any | None:
    """A client for the engine at ``base_url`` if it answered ``ping``, else ``None`` (no SDK,
    no engine, no access)."""
    try:
        import docker

        probe = docker.DockerClient(base_url=base_url, timeout=timeout)
        try:
            probe.ping()
        finally:
            probe.close()
        return docker.DockerClient(base_url=base_url, timeout=_API_TIMEOUT_S)
    except Exception:  # any failure means "no usable engine"
        return None


def docker_problem(client: Any, config: SandboxConfig) -> str | None:
    """Why this engine cannot run sandboxes (the image is missing), or ``None``."""
    try:
        if client.images.list(name=config.image):
            return None
    except Exception as exc:  # the engine answered ping but not this
        return f"listing its images failed ({exc})"
    return f"it lacks the sandbox image {config.image} (`make up` builds it; nothing is pulled)"


def _work_archive(job: SandboxJob, config: SandboxConfig) -> bytes:
    """A tar of /work's initial content: the entry (and anything else of the work directory)
    owned by the sandbox user; ``in/`` and the inputs owned by root and read-only, which is what
    makes them read-only for the sandbox (the volume itself is writable)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(path: Path | None, arcname: str, owner: tuple[int, int], modes: int) -> None:
            """``modes``: 0o<file mode><dir mode> packed as file << 12 | dir."""
            if path is None:
                info = tarfile.TarInfo(arcname)
                info.type = tarfile.DIRTYPE
            else:
                info = tar.gettarinfo(str(path), arcname)
            info.uid, info.gid = owner
            info.uname = info.gname = ""
            info.mode = modes >> 12 if info.isreg() else modes & 0o7777
            if info.isreg() and path is not None:
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            elif info.isdir():
                tar.addfile(info)  # nothing else (links, fifos) is copied in

        user, root = (config.uid, config.gid), (0, 0)
        for path in sorted(job.host_work.rglob("*")):
            relative = path.relative_to(job.host_work).as_posix()
            if relative != "in" and not relative.startswith("in/"):
                add(path, relative, user, 0o600 << 12 | 0o700)
        add(None, "in", root, 0o755)
        for path in sorted(job.host_inputs.rglob("*")):
            relative = "in/" + path.relative_to(job.host_inputs).as_posix()
            add(path, relative, root, 0o444 << 12 | 0o755)
    return buffer.getvalue()


def _extract_outputs(archive: Path, out: Path) -> None:
    """Regular files and directories of ``get_archive('/work/out')`` into ``out``; nothing
    else (links, devices) and nothing outside it."""
    with tarfile.open(archive, mode="r") as tar:
        for member in tar:
            parts = posixpath.normpath(member.name).split("/")
            if parts[0] != "out" or ".." in parts or member.name.startswith("/"):
                continue
            target = out.joinpath(*parts[1:]) if len(parts) > 1 else out
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isreg():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is not None:
                    with source, target.open("wb") as handle:
                        while chunk := source.read(1 << 20):
                            handle.write(chunk)


class _Output:
    """Reads the container's attach stream to its end in a daemon thread: stdout into the log
    buffer, stderr (only the launcher writes there) kept apart. The stream is the engine's
    multiplexed format: frames of an 8-byte header (stream, 0, 0, 0, big-endian length) and
    the payload, parsed here from large reads (a frame per line of output is common)."""

    def __init__(self, sock: Any, buffer: HeadTailBuffer) -> None:
        # The SDK leaves the client's timeout on an attach socket: a quiet program would end it.
        for candidate in (sock, getattr(sock, "_sock", None)):
            if candidate is not None and hasattr(candidate, "settimeout"):
                candidate.settimeout(None)
        self.sock = sock
        self.buffer = buffer
        self.stderr: list[bytes] = []
        self.thread = threading.Thread(target=self._read, name="sandbox-io", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        pending = bytearray()
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.sock.read(1 << 16):
                pending += chunk
                position = 0
                while len(pending) - position >= _FRAME_HEADER.size:
                    stream, length = _FRAME_HEADER.unpack_from(pending, position)
                    start = position + _FRAME_HEADER.size
                    if len(pending) < start + length:
                        break
                    payload = bytes(pending[start : start + length])
                    position = start + length
                    if stream == _STDERR:
                        self.stderr.append(payload)
                    else:
                        self.buffer.write(payload)
                del pending[:position]

    def finish(self, timeout: float) -> bytes:
        self.thread.join(timeout)
        with contextlib.suppress(OSError):
            self.sock.close()
        return b"".join(self.stderr)


class _Waiter:
    """``container.wait()`` in a daemon thread; ``done`` is set with the exit status."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.status: int | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        threading.Thread(target=self._wait, name="sandbox-wait", daemon=True).start()

    def _wait(self) -> None:
        import requests

        try:
            while True:
                try:
                    result = self.container.wait(timeout=_WAIT_POLL_S)
                except requests.exceptions.ReadTimeout:
                    continue  # still running (the next call resumes waiting)
                self.status = int(result["StatusCode"])
                return
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()


@dataclass(slots=True)
class _Outcome:
    timed_out: bool = False
    cancelled: bool = False
    killed_reason: str | None = None
    killed_message: str | None = None

    @property
    def killed(self) -> bool:
        return self.timed_out or self.cancelled or self.killed_reason is not None


class DockerBackend:
    name: BackendName = "docker"

    def __init__(self, config: SandboxConfig, client: Any) -> None:
        self.config = config
        self.client = client
        self._info: dict[str, Any] | None = None

    def _engine_info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = dict(self.client.info())
        return self._info

    def _engine_cpus(self) -> int:
        return int(self._engine_info().get("NCPU") or 1)

    def _security_opt(self) -> list[str]:
        options = ["no-new-privileges"]
        if self.config.seccomp:
            try:
                options.append(docker_security_opt(self._engine_info().get("Architecture")))
            except ValueError as exc:  # an engine on a machine without a syscall table
                raise SandboxFailedError(f"Docker sandbox: {exc}") from exc
        return options

    def run(self, job: SandboxJob, cancel: threading.Event) -> RawRun:
        import docker.errors

        config = self.config
        name = f"reflux-sandbox-{uuid.uuid4().hex[:12]}"
        volume = container = None
        output: _Output | None = None
        try:
            volume = self.client.volumes.create(name=name, labels={_LABEL: "1"})
            container = self._create(job, name)
            if not container.put_archive("/work", _work_archive(job, config)):
                raise SandboxFailedError("Docker refused to copy the code into the container")
            watched = self._watched(volume, job)
            buffer = HeadTailBuffer(config.log_cap_bytes)
            output = _Output(
                self.client.api.attach_socket(
                    container.id, params={"stdout": 1, "stderr": 1, "stream": 1}
                ),
                buffer,
            )
            started = time.monotonic()
            container.start()
            waiter = _Waiter(container)
            outcome = self._supervise(
                container, waiter, job=job, cancel=cancel, started=started, watched=watched
            )
            duration_ms = round((time.monotonic() - started) * 1000, 3)
            report = output.finish(timeout=5)
            if waiter.error is not None:
                raise SandboxFailedError(f"Docker lost the sandbox: {waiter.error}")
            exit_code = -1 if outcome.killed or waiter.status is None else waiter.status
            peak_kib = self._peak_kib(report, buffer)
            if not outcome.killed:
                outcome.killed_reason, outcome.killed_message = self._copy_outputs(container, job)
            return RawRun(
                exit_code=exit_code,
                duration_ms=duration_ms,
                peak_mem_mb=round(peak_kib / 1024, 3) if peak_kib else None,
                logs=buffer.text(),
                logs_truncated=buffer.truncated,
                timed_out=outcome.timed_out,
                cancelled=outcome.cancelled,
                killed_reason=outcome.killed_reason,
                killed_message=outcome.killed_message,
            )
        except docker.errors.DockerException as exc:
            raise SandboxFailedError(f"Docker could not run the sandbox: {exc}") from exc
        finally:
            if container is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
            if volume is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    volume.remove(force=True)
            if output is not None:
                output.finish(timeout=1)  # at EOF once the container is gone; closes the socket

    @staticmethod
    def _peak_kib(report: bytes, buffer: HeadTailBuffer) -> int:
        """The launcher's ``{"maxrss_kib": N}``; anything else on stderr (the launcher itself
        failed) is appended to the log rather than lost."""
        peak = 0
        for line in report.decode("utf-8", "replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if isinstance(value, dict) and isinstance(value.get("maxrss_kib"), int):
                peak = value["maxrss_kib"]
            elif line.strip():
                buffer.write(line.encode() + b"\n")
        return peak

    def _watched(self, volume: Any, job: SandboxJob) -> tuple[Path, tuple[int, int]] | None:
        """The volume's folder on this host and the inputs' share of it, if this worker can
        see it (a local engine); ``None`` with a remote one."""
        mountpoint = Path(volume.attrs.get("Mountpoint") or "/nonexistent")
        with contextlib.suppress(OSError):
            if (mountpoint / job.entry).is_file():
                inputs = directory_usage(job.host_inputs)
                return mountpoint, inputs
        log.warning(
            "docker sandbox: the volume's folder %s is not visible from this worker; /work's "
            "size is not watched during the run (remote engine?)",
            mountpoint,
        )
        return None

    def _supervise(
        self,
        container: Any,
        waiter: _Waiter,
        *,
        job: SandboxJob,
        cancel: threading.Event,
        started: float,
        watched: tuple[Path, tuple[int, int]] | None,
    ) -> _Outcome:
        """Wait for the container; kill it on the wall clock, on cancel, or when /work
        outgrows its cap (the same watchdog as bubblewrap's, on the volume's folder)."""
        import docker.errors

        limits, interval = job.limits, self.config.watchdog_interval_s
        deadline = started + limits.wall_timeout_s
        next_check = started + interval
        outcome = _Outcome()
        while not waiter.done.wait(0.02):
            now = time.monotonic()
            if cancel.is_set():
                outcome.cancelled = True
            elif now >= deadline:
                outcome.timed_out = True
            elif watched is not None and now >= next_check:
                next_check = now + interval
                overflow = work_overflow(watched[0], limits, baseline=watched[1])
                if overflow is not None:
                    outcome.killed_reason, outcome.killed_message = "OutputTooLarge", overflow
            if outcome.killed:
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()
                # Once the engine reports the exit, pid 1 is gone and with it every process.
                waiter.done.wait(30)
                break
        return outcome

    def _create(self, job: SandboxJob, name: str) -> Any:
        from docker.types import LogConfig, Ulimit

        config, limits = self.config, job.limits
        image_config = dataclasses.replace(config, interpreters=dict(IMAGE_INTERPRETERS))
        # The worker kills the container on the wall clock; should the worker itself die, the
        # launcher's alarm ends the container a little later (bwrap has --die-with-parent).
        backstop = math.ceil(limits.wall_timeout_s + _BACKSTOP_GRACE_S)
        command = [
            _LAUNCHER_PYTHON,
            "-I",
            "-S",
            "-c",
            LAUNCHER,
            f"2:{backstop}",
            *program_command(job, image_config),
        ]
        memory = (
            limits.data_bytes + limits.tmp_size_bytes + limits.shm_size_bytes + _MEMORY_HEADROOM
        )
        cpus = min(max(limits.cpus, 0.01), self._engine_cpus())
        return self.client.containers.create(
            config.image,
            command=command,
            name=name,
            hostname="sandbox",
            user=f"{config.uid}:{config.gid}",
            working_dir="/work",
            environment=sandbox_env(job),
            init=True,
            network_mode="none" if job.network == "off" else "host",
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(cpus * 1e9),
            pids_limit=limits.processes,
            read_only=True,
            tmpfs={SANDBOX_TMP: f"rw,exec,nosuid,nodev,size={limits.tmp_size_bytes},mode=1777"},
            shm_size=limits.shm_size_bytes,
            security_opt=self._security_opt(),
            cap_drop=["ALL"],
            ulimits=[
                # A backstop one CPU-second above the budget: under the quota a process reaches
                # ceil(cpu * timeoutSec) only at the wall clock, and the two would race (a busy
                # loop ended sometimes as CodeTimeout, sometimes as SIGXCPU; measured 1 in 3).
                Ulimit(name="cpu", soft=limits.cpu_seconds + 1, hard=limits.cpu_seconds + 2),
                Ulimit(name="data", soft=limits.data_bytes, hard=limits.data_bytes),
                Ulimit(name="as", soft=limits.address_space_bytes, hard=limits.address_space_bytes),
                Ulimit(name="fsize", soft=limits.file_size_bytes, hard=limits.file_size_bytes),
                Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                Ulimit(name="core", soft=0, hard=0),
            ],
            volumes={
                name: {"bind": "/work", "mode": "rw"},
                **{str(host): {"bind": inside, "mode": "rw"} for host, inside in job.binds},
            },
            log_config=LogConfig(type="none"),
            labels={_LABEL: "1"},
            detach=True,
            stdin_open=False,
            tty=False,
        )

    def _copy_outputs(self, container: Any, job: SandboxJob) -> tuple[str | None, str | None]:
        import docker.errors

        cap = job.limits.max_output_bytes
        # tar adds 512-byte headers and padding per file; allow for them on top of the cap.
        budget = cap + (job.limits.max_output_files + 16) * 1024
        try:
            stream, _stat = container.get_archive("/work/out")
        except docker.errors.NotFound:
            return None, None  # the program removed out/: no outputs
        with tempfile.NamedTemporaryFile(prefix="reflux-out-", suffix=".tar") as spool:
            size = 0
            for chunk in stream:
                size += len(chunk)
                if size > budget:
                    return (
                        "OutputTooLarge",
                        f"Expected at most {cap} bytes in out/, but the archive exceeds {budget}",
                    )
                spool.write(chunk)
            spool.flush()
            _extract_outputs(Path(spool.name), job.host_out)
        return None, None
