"""The Docker backend (the ``docker`` SDK), used when an engine answers ``ping``.

UNTESTED on the development machine (it has no Docker engine): written against the docker SDK
7.x API and reviewed, but no test exercises it. See docs/decisions/0007-code-run-sandbox.md.

Files move through the engine's archive API rather than bind mounts, so the worker may itself
run in a container or talk to a remote engine: a fresh named volume is mounted at /work, the
entry and inputs are copied in with ``put_archive`` before start, and ``/work/out`` is copied back
with ``get_archive`` (streamed, capped) after the container exits.

Limits: ``mem_limit`` = ``memswap_limit`` (no swap), ``nano_cpus`` (a real vCPU quota, unlike
bubblewrap), ``pids_limit``, RLIMIT_CPU and RLIMIT_FSIZE as ulimits, read-only root, a
size-limited /tmp tmpfs, all capabilities dropped, ``no-new-privileges``, an unprivileged
user, ``network_mode="none"`` unless network is allowed and requested.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

from node_workers.sandbox.backend import BackendName, RawRun, SandboxJob
from node_workers.sandbox.bubblewrap import SANDBOX_TMP, interpreter_command, sandbox_env
from node_workers.sandbox.errors import SandboxFailedError
from node_workers.sandbox.limits import SandboxConfig
from node_workers.sandbox.logs import HeadTailBuffer

__all__ = ["DockerBackend", "docker_client"]

_LABEL: Final = "io.reflux.sandbox"
_POLL_S: Final = 0.5


def docker_client(timeout: float = 2.0) -> Any | None:
    """A client whose engine answered ``ping``, or ``None`` (no SDK, no engine, no access)."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception:  # any failure means "no usable engine"
        return None
    return client


def _work_archive(job: SandboxJob, config: SandboxConfig) -> bytes:
    """A tar of /work's initial content, owned by the sandbox user."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(path: Path, arcname: str, mode: int) -> None:
            info = tar.gettarinfo(str(path), arcname=arcname)
            info.uid, info.gid, info.uname, info.gname = config.uid, config.gid, "", ""
            info.mode = mode if info.isreg() else 0o700
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)

        for path in sorted(job.host_work.rglob("*")):
            add(path, path.relative_to(job.host_work).as_posix(), 0o600)
        for path in sorted(job.host_inputs.rglob("*")):
            add(path, "in/" + path.relative_to(job.host_inputs).as_posix(), 0o400)
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


class DockerBackend:
    name: BackendName = "docker"

    def __init__(self, config: SandboxConfig, client: Any) -> None:
        self.config = config
        self.client = client

    def _image(self, job: SandboxJob) -> str:
        import docker.errors

        image = self.config.images[job.lang]
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            self.client.images.pull(image)
        return image

    def run(self, job: SandboxJob, cancel: threading.Event) -> RawRun:
        import docker.errors

        config = self.config
        name = f"reflux-sandbox-{uuid.uuid4().hex[:12]}"
        interpreter = {"python": "python3", "node": "node", "bash": "bash"}[job.lang]
        command = interpreter_command(job.lang, job.entry, config)
        command[0] = interpreter  # the image's interpreter, found on its PATH
        env = sandbox_env(job) | {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        volume = container = None
        try:
            image = self._image(job)
            volume = self.client.volumes.create(name=name, labels={_LABEL: "1"})
            container = self._create(job, image, name, command, env)
            if not container.put_archive("/work", _work_archive(job, config)):
                raise SandboxFailedError("Docker refused to copy the code into the container")
            buffer = HeadTailBuffer(config.log_cap_bytes)
            started = time.monotonic()
            container.start()
            exit_code, timed_out, cancelled = self._wait(container, job, cancel, started)
            duration_ms = round((time.monotonic() - started) * 1000, 3)
            for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=False):
                buffer.write(chunk)
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            killed_reason = killed_message = None
            if not (timed_out or cancelled):
                killed_reason, killed_message = self._copy_outputs(container, job)
            if oom and killed_reason is None:
                buffer.write(b"\n[sandbox] killed: the memory limit was exceeded (OOM)\n")
            return RawRun(
                exit_code=exit_code,
                duration_ms=duration_ms,
                peak_mem_mb=None,  # cgroup v2 keeps no max after exit; not measured
                logs=buffer.text(),
                logs_truncated=buffer.truncated,
                timed_out=timed_out,
                cancelled=cancelled,
                killed_reason=killed_reason,
                killed_message=killed_message,
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

    @staticmethod
    def _wait(
        container: Any, job: SandboxJob, cancel: threading.Event, started: float
    ) -> tuple[int, bool, bool]:
        """``(exit_code, timed_out, cancelled)``; kills the container on timeout or cancel."""
        import docker.errors
        import requests

        while True:
            try:
                return int(container.wait(timeout=_POLL_S)["StatusCode"]), False, False
            except requests.exceptions.RequestException:
                pass  # the wait's own timeout: still running
            if cancel.is_set() or time.monotonic() - started >= job.limits.wall_timeout_s:
                cancelled = cancel.is_set()
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()
                with contextlib.suppress(requests.exceptions.RequestException):
                    container.wait(timeout=30)
                return -1, not cancelled, cancelled

    def _create(
        self, job: SandboxJob, image: str, name: str, command: list[str], env: dict[str, str]
    ) -> Any:
        from docker.types import Ulimit

        config, limits = self.config, job.limits
        return self.client.containers.create(
            image,
            command=command,
            name=name,
            user=f"{config.uid}:{config.gid}",
            working_dir="/work",
            environment=env,
            network_mode="none" if job.network == "off" else "bridge",
            mem_limit=limits.data_bytes,
            memswap_limit=limits.data_bytes,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.processes,
            read_only=True,
            tmpfs={SANDBOX_TMP: f"size={limits.tmp_size_bytes},mode=1777"},
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            ulimits=[
                Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 1),
                Ulimit(name="fsize", soft=limits.file_size_bytes, hard=limits.file_size_bytes),
                Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                Ulimit(name="core", soft=0, hard=0),
            ],
            volumes={name: {"bind": "/work", "mode": "rw"}},
            labels={_LABEL: "1"},
            detach=True,
        )

    def _copy_outputs(self, container: Any, job: SandboxJob) -> tuple[str | None, str | None]:
        cap = job.limits.max_output_bytes
        # tar adds 512-byte headers and padding per file; allow for them on top of the cap.
        budget = cap + (job.limits.max_output_files + 16) * 1024
        stream, _stat = container.get_archive("/work/out")
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
