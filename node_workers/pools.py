"""A node's own thread pool for blocking calls, sized to the node's concurrency.

asyncio's default executor is small (the worker sizes it for its lanes' polls and commits) and
shared: a node that sent its blocking calls there (``asyncio.to_thread``) would queue behind
other nodes' calls and the lanes' polls, inside its attempts' timeouts. So a node that blocks --
``email.send``'s ``smtplib``, a large ``transform`` -- owns a :class:`BlockingPool`, and
:meth:`~node_workers.node.Node.set_concurrency` sizes it to the number of attempts the runtime
runs at once: a started attempt always finds a thread. Threads are created on demand, up to
that size, and kept for reuse.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, ParamSpec, TypeVar

from foundation.errors import ConfigurationError

__all__ = ["DEFAULT_POOL_SIZE", "BlockingPool"]

DEFAULT_POOL_SIZE: Final = 8
"""Size of a pool whose node was never told its concurrency (the node used outside a worker)."""

P = ParamSpec("P")
T = TypeVar("T")


class BlockingPool:
    """Runs blocking callables in at most ``size`` threads named ``<name>_<n>``."""

    def __init__(self, name: str, size: int = DEFAULT_POOL_SIZE) -> None:
        self.name = name
        self._size = self._checked(size)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def _checked(self, size: int) -> int:
        if size < 1:
            raise ConfigurationError(f"Expected a {self.name} pool size >= 1, but got {size}")
        return size

    def resize(self, size: int) -> None:
        """Use ``size`` threads from now on; calls already submitted finish where they run."""
        size = self._checked(size)
        with self._lock:
            self._size = size
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the pool. Cancelling the await stops waiting, not the call
        (a thread cannot be interrupted): it ends on its own, e.g. at a socket timeout."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._size, thread_name_prefix=self.name
                )
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
