"""One way to be a context manager for everything that holds clients: ``with X(...) as x:``
closes ``x`` on the way out, whether the block ended normally or raised."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing:
    """Mixin: ``__enter__`` returns the object, ``__exit__`` calls :meth:`close` (or
    :meth:`close_after_error` when the block raised)."""

    def close(self) -> None:
        raise NotImplementedError

    def close_after_error(self, error: BaseException) -> None:
        """Closing while an error is already on its way up; override to keep a close failure
        from masking it."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.close_after_error(exc)
