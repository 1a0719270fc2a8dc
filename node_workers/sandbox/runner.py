"""The code runner: request in, ``CodeRunResult`` out, whatever backend runs it.

One run: check the request against the operator's policy, pick a backend, fetch the code and
inputs from the object store into a private directory, run, collect ``out/`` safely, upload it,
remove the directory. All of it is blocking I/O, done in a dedicated thread pool; ``run`` is the
async face, and cancelling it (the worker's deadline) kills the sandbox.

The user program failing is a *result* (``status`` error/timeout), not an exception: the seed's
contract carries it in ``status``, and callers such as the node generator need the logs of a
failing program. Exceptions are reserved for the sandbox and the request around the code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import mimetypes
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from foundation.errors import ConfigurationError
from foundation.objectstore import BlobNotFoundError, BlobStore, S3BlobStore
from foundation.settings import Settings, get_settings
from node_workers.errors import RetryableNodeError
from node_workers.sandbox.backend import SandboxBackend, SandboxJob
from node_workers.sandbox.bubblewrap import BubblewrapBackend, bubblewrap_problem
from node_workers.sandbox.docker_backend import DockerBackend, docker_client, docker_problem
from node_workers.sandbox.errors import (
    InputError,
    LimitAboveMaximumError,
    NetworkNotAllowedError,
    SandboxUnavailableError,
    UnsupportedRequestError,
)
from node_workers.sandbox.limits import (
    ResourceLimits,
    SandboxConfig,
    limit_violations,
    resource_limits,
)
from node_workers.sandbox.models import (
    MAX_CODE_BYTES,
    CodeRunError,
    CodeRunRequest,
    CodeRunResult,
    OutputFile,
    RunMetrics,
)
from node_workers.sandbox.workdir import RunDirectory, collect_outputs, read_regular_file

__all__ = ["SandboxRunner", "check_policy", "exit_hint", "result_from_run"]

_FIX_HINT = (
    "Install bubblewrap on the worker host (`apt-get install -y bubblewrap`; it needs "
    "unprivileged user namespaces) or give the worker a reachable Docker engine holding the "
    "sandbox image (`make up` starts one and builds the image; REFLUX_DOCKER_HOST selects "
    "another)."
)


def exit_hint(exit_code: int, limits: ResourceLimits) -> str:
    """What an exit code of ``128 + signal`` means, in the terms of the request's limits."""
    if exit_code <= 128 or exit_code > 128 + 64:
        return ""
    number = exit_code - 128
    try:
        name = signal.Signals(number).name
    except ValueError:
        return ""
    if number == signal.SIGXCPU:
        return f" (killed by {name}: the CPU-time limit of {limits.cpu_seconds}s was reached)"
    if number == signal.SIGXFSZ:
        return f" (killed by {name}: a file reached the {limits.max_output_bytes}-byte cap)"
    if number == signal.SIGKILL:
        return f" (killed by {name}: the memory limit or the program itself)"
    return f" (killed by {name})"


def check_policy(request: CodeRunRequest, config: SandboxConfig) -> None:
    """Refuse what this worker will not run, before anything is fetched."""
    violations = limit_violations(request.limits, config)
    if violations:
        raise LimitAboveMaximumError("; ".join(v.message for v in violations))
    network = request.limits.network
    if network == "limited":
        raise UnsupportedRequestError(
            "Expected limits.network 'off' or 'full', but got 'limited': neither backend can "
            "filter egress yet; ask for 'off' (no network) or 'full'"
        )
    if network == "full" and not config.allow_network:
        raise NetworkNotAllowedError(
            "Expected limits.network 'off', but got 'full' and this worker does not allow "
            "network in sandboxes (SandboxConfig.allow_network)"
        )


def result_from_run(
    raw: Any,
    *,
    backend: str,
    outputs: list[OutputFile],
    collection_error: tuple[str, str] | None,
    limits: ResourceLimits,
) -> CodeRunResult:
    """Status and error of a finished run (pure): timeout > sandbox kill > outputs over a cap >
    exit code."""
    error: CodeRunError | None = None
    status = "ok"
    if raw.timed_out:
        status = "timeout"
        error = CodeRunError(
            error_class="CodeTimeout",
            message=f"Expected the code to finish within {limits.wall_timeout_s:g}s, but it "
            "did not; "
            "the sandbox was killed",
        )
    elif raw.cancelled:
        status = "error"
        error = CodeRunError(error_class="Cancelled", message="The run was cancelled")
    elif raw.killed_reason is not None:
        status = "error"
        error = CodeRunError(error_class=raw.killed_reason, message=raw.killed_message or "")
    elif collection_error is not None:
        status = "error"
        error = CodeRunError(error_class=collection_error[0], message=collection_error[1])
    elif raw.exit_code != 0:
        status = "error"
        error = CodeRunError(
            error_class="CodeFailed",
            message=f"Expected exit code 0, but got {raw.exit_code}"
            + exit_hint(raw.exit_code, limits),
        )
    return CodeRunResult(
        status=status,  # type: ignore[arg-type]  # one of the RunStatus literals above
        outputs=outputs if status == "ok" else [],
        logs=raw.logs,
        logs_truncated=raw.logs_truncated,
        metrics=RunMetrics(
            duration_ms=raw.duration_ms, peak_mem_mb=raw.peak_mem_mb, exit_code=raw.exit_code
        ),
        backend=backend,  # type: ignore[arg-type]
        error=error,
    )


class SandboxRunner:
    """Runs ``CodeRunRequest``s. Cheap to construct: nothing is probed or connected until the
    first run (the API builds node instances just to read their manifests)."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        store: BlobStore | None = None,
        settings: Settings | None = None,
    ) -> None:
        # Without an explicit config: the operator's REFLUX_SANDBOX_* settings (maximums, sizes).
        self.config = config or SandboxConfig.from_settings(settings or get_settings())
        self._store = store
        self._settings = settings
        self._backend: SandboxBackend | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._parallel_runs = self.config.max_parallel_runs
        self._lock = threading.Lock()

    @property
    def store(self) -> BlobStore:
        with self._lock:
            if self._store is None:
                self._store = S3BlobStore(self._settings or get_settings())
            return self._store

    def backend(self) -> SandboxBackend:
        """Docker if an engine answers and holds the sandbox image (``auto``/``docker``), else
        bubblewrap; cached once found."""
        with self._lock:
            if self._backend is not None:
                return self._backend
            choice = self.config.backend
            reasons: list[str] = []
            if choice in ("auto", "docker"):
                host = (
                    self.config.docker_host
                    or (self._settings or get_settings()).resolved_docker_host()
                )
                client = docker_client(host)
                problem = (
                    f"no Docker engine answered ping at {host}"
                    if client is None
                    else docker_problem(client, self.config)
                )
                if problem is None:
                    self._backend = DockerBackend(self.config, client)
                    return self._backend
                if client is not None:
                    client.close()
                    problem = f"the Docker engine at {host} is unusable: {problem}"
                reasons.append(problem)
            if choice in ("auto", "bubblewrap"):
                problem = bubblewrap_problem(self.config)
                if problem is None:
                    self._backend = BubblewrapBackend(self.config)
                    return self._backend
                reasons.append(f"bubblewrap is unusable ({problem})")
            raise SandboxUnavailableError(
                f"Expected a sandbox backend ({choice}), but {'; '.join(reasons)}. {_FIX_HINT}"
            )

    def _fetch(self, uri: str, *, what: str, limit: int) -> bytes:
        try:
            data = self.store.get(uri)
        except BlobNotFoundError as exc:
            raise InputError(f"Expected {what} at {uri}, but there is no such blob") from exc
        except (BotoCoreError, ClientError) as exc:
            raise RetryableNodeError(
                f"Object store unavailable while fetching {what} {uri}: {exc}",
                error_class="ServiceUnavailable",
            ) from exc
        if len(data) > limit:
            raise InputError(f"Expected {what} of at most {limit} bytes, but {uri} has {len(data)}")
        return data

    def _put(self, key: str, data: bytes, name: str) -> str:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        try:
            return self.store.put(key, data, content_type)
        except (BotoCoreError, ClientError) as exc:
            raise RetryableNodeError(
                f"Object store unavailable while storing output {name}: {exc}",
                error_class="ServiceUnavailable",
            ) from exc

    def run_sync(
        self,
        request: CodeRunRequest,
        *,
        key_prefix: str,
        cancel: threading.Event | None = None,
        timeout_cap_s: float | None = None,
    ) -> CodeRunResult:
        """Run ``request`` to its end (blocking). Outputs go to
        ``<output_key_prefix>/<key_prefix>/out/<name>`` in the object store."""
        config = self.config
        check_policy(request, config)
        backend = self.backend()
        if isinstance(backend, BubblewrapBackend):
            interpreter = config.interpreters[request.lang]
            if not interpreter.startswith("/usr/") and not interpreter.startswith("/bin/"):
                raise SandboxUnavailableError(
                    f"Expected the {request.lang} interpreter under /usr or /bin (the only "
                    f"host paths in the sandbox), but it is {interpreter}"
                )
            if not os.access(interpreter, os.X_OK):
                raise SandboxUnavailableError(
                    f"Expected a {request.lang} interpreter at {interpreter}, but there is none "
                    "on this worker",
                    error_class="LanguageUnavailable",
                )
        limits = resource_limits(request.limits, config)
        if timeout_cap_s is not None and timeout_cap_s < limits.wall_timeout_s:
            limits = dataclasses.replace(limits, wall_timeout_s=max(timeout_cap_s, 0.1))

        if request.code_ref is not None:
            code = self._fetch(request.code_ref.uri, what="code_ref", limit=MAX_CODE_BYTES)
        else:
            code = (request.code or "").encode()
        directory = RunDirectory(config)
        try:
            directory.write_entry(request.entry, code)
            budget = config.max_input_bytes
            for item in request.inputs:
                data = self._fetch(item.url, what=f"input {item.name!r}", limit=budget)
                budget -= len(data)
                directory.write_input(item.name, data)
            job = SandboxJob(
                lang=request.lang,
                entry=request.entry,
                network=request.limits.network,
                limits=limits,
                host_work=directory.work,
                host_inputs=directory.inputs,
                packages=tuple(request.packages),
            )
            raw = backend.run(job, cancel or threading.Event())
            outputs: list[OutputFile] = []
            collection_error: tuple[str, str] | None = None
            if not (raw.timed_out or raw.cancelled or raw.killed_reason):
                # Also after a failed exit: a program that died writing past the size cap
                # (EFBIG, SIGXFSZ) should be told so, not just "exit code 1".
                collected = collect_outputs(
                    job.host_out,
                    max_bytes=limits.max_output_bytes,
                    max_files=limits.max_output_files,
                )
                if collected.error_class is not None:
                    collection_error = (collected.error_class, collected.message or "")
                elif raw.exit_code == 0:
                    prefix = f"{config.output_key_prefix}/{key_prefix}/out"
                    for file in collected.files:
                        url = self._put(
                            f"{prefix}/{file.name}", read_regular_file(file.path), file.name
                        )
                        outputs.append(OutputFile(name=file.name, url=url, size=file.size))
            return result_from_run(
                raw,
                backend=backend.name,
                outputs=outputs,
                collection_error=collection_error,
                limits=limits,
            )
        finally:
            directory.remove()

    async def run(
        self,
        request: CodeRunRequest,
        *,
        key_prefix: str,
        timeout_cap_s: float | None = None,
    ) -> CodeRunResult:
        """:meth:`run_sync` in the runner's thread pool; cancelling kills the sandbox."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._parallel_runs, thread_name_prefix="sandbox"
                )
            executor = self._executor
        cancel = threading.Event()
        call = functools.partial(
            self.run_sync,
            request,
            key_prefix=key_prefix,
            cancel=cancel,
            timeout_cap_s=timeout_cap_s,
        )
        future = asyncio.get_running_loop().run_in_executor(executor, call)
        try:
            return await future
        except asyncio.CancelledError:
            cancel.set()  # the thread sees it within ~20 ms, kills the sandbox, cleans up
            raise

    def set_parallel_runs(self, runs: int) -> None:
        """Run up to ``runs`` at once from now on (instead of ``config.max_parallel_runs``): the
        worker sets it to code.run's concurrency, so a started attempt never waits for a
        thread. Runs already submitted finish in the previous pool."""
        if runs < 1:
            raise ConfigurationError(f"Expected parallel runs >= 1, but got {runs}")
        with self._lock:
            self._parallel_runs = runs
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
