"""``code.run@1.0.0``: run user code (python, node, bash) in a sandbox.

Params are the seed's ``CodeRunRequest`` plus ``allow_failure``; the output is the seed's
``CodeRunResult`` (see :mod:`node_workers.sandbox`).

A program that exits non-zero or runs out of time **fails the step** by default: non-retryable
``CodeFailed`` (or ``OutputTooLarge`` / ``TooManyOutputs``) and retryable ``CodeTimeout``, with
the exit code and the tail of the logs in the message. That keeps failures visible to the retry
policy, the traces and the critic, which group by error class. A step that wants to inspect a
failure itself (run tests, branch on the result) sets ``allow_failure: true`` and gets the result
with ``status`` error/timeout as its output instead.

Workload: CPU. The program runs in a sandbox process (its CPU is the kernel's to schedule, not
the event loop's); the runner's blocking part (fetching inputs, waiting for the process,
uploading outputs) runs in the runner's thread pool, which the runtime sizes to this node's
concurrency (:meth:`CodeRunNode.set_concurrency`), so a started attempt never queues for a
thread.
"""

from __future__ import annotations

from typing import Final

from node_workers.node import (
    Node,
    NodeContext,
    NonRetryableNodeError,
    RetryableNodeError,
    Workload,
)
from node_workers.sandbox import CodeRunRequest, CodeRunResult, SandboxConfig, SandboxRunner

__all__ = ["CodeRunInput", "CodeRunNode", "error_for_result"]

# Room left before the invocation's deadline to upload outputs after the program ends.
UPLOAD_MARGIN_S: Final = 5.0
_LOG_TAIL_CHARS: Final = 1500


class CodeRunInput(CodeRunRequest):
    allow_failure: bool = False
    """Return a failed or timed-out run as the output (``status`` error/timeout) instead of
    failing the step."""


def error_for_result(result: CodeRunResult) -> RetryableNodeError | NonRetryableNodeError:
    """The step's error for a run whose ``status`` is not ok."""
    error_class = result.error.error_class if result.error else "CodeFailed"
    message = result.error.message if result.error else f"status {result.status}"
    tail = result.logs[-_LOG_TAIL_CHARS:].strip()
    text = f"{message} (exit code {result.metrics.exit_code}, backend {result.backend})"
    if tail:
        text += f"; logs end with:\n{tail}"
    if result.status == "timeout":
        # Like NodeTimeout: load can make a run slow; the retry policy may list it as final.
        return RetryableNodeError(text, error_class=error_class)
    return NonRetryableNodeError(text, error_class=error_class)


class CodeRunNode(Node[CodeRunInput, CodeRunResult]):
    name = "code.run"
    version = "1.0.0"
    Input = CodeRunInput
    Output = CodeRunResult
    cacheable = False  # user code may read the clock or randomness
    side_effects = True  # with network allowed it can reach anything
    workload = Workload.CPU
    own_pool = True  # long attempts: never holding the slots of short ones
    description = "Run python, node or bash code in a sandbox; outputs from out/ to the store."

    def __init__(
        self, runner: SandboxRunner | None = None, config: SandboxConfig | None = None
    ) -> None:
        self.runner = runner or SandboxRunner(config)

    def set_concurrency(self, limit: int) -> None:
        self.runner.set_parallel_runs(limit)

    async def execute(self, params: CodeRunInput, ctx: NodeContext) -> CodeRunResult:
        if params.limits.network != "off":
            # Sandboxed code with network reaches any host unchecked (ADR 0050).
            ctx.secrets.require_any_host(
                node="code.run", why="with network the code can reach any host"
            )
        remaining = ctx.remaining_s()
        cap = None if remaining is None else max(remaining - UPLOAD_MARGIN_S, 1.0)
        # Keyed by the invocation: a re-delivered invocation overwrites its own outputs.
        key_prefix = f"{ctx.run_id}/{ctx.step_id}/{ctx.attempt}-{ctx.invocation_id}"
        result = await self.runner.run(params, key_prefix=key_prefix, timeout_cap_s=cap)
        ctx.record("duration_ms", result.metrics.duration_ms)
        ctx.record("exit_code", result.metrics.exit_code)
        if result.metrics.peak_mem_mb is not None:
            ctx.record("peak_mem_mb", result.metrics.peak_mem_mb)
        ctx.record("outputs", len(result.outputs))
        ctx.record("output_bytes", sum(o.size for o in result.outputs))
        ctx.record("log_chars", len(result.logs))
        ctx.logger.info(
            "code.run %s via %s: %s in %.0f ms",
            params.lang,
            result.backend,
            result.status,
            result.metrics.duration_ms,
        )
        if result.status != "ok" and not params.allow_failure:
            raise error_for_result(result)
        return result

    async def aclose(self) -> None:
        self.runner.close()
