"""Running blocking Postgres calls from async routes.

Routes that wait (``wait_ms``, SSE) are async so a waiting request holds neither a worker thread
nor a connection while it sleeps: each look at the projection borrows a pooled connection in a
worker thread and gives it back at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

__all__ = ["with_conn"]

P = ParamSpec("P")
T = TypeVar("T")


async def with_conn(
    pool: ConnectionPool[Any],
    timeout: float,
    fn: Callable[Concatenate[psycopg.Connection[Any], P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    def call() -> T:
        with pool.connection(timeout=timeout) as conn:
            return fn(conn, *args, **kwargs)

    return await run_in_threadpool(call)
