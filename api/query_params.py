"""One value per query parameter.

No REFLUX route takes a list in its query string, and FastAPI keeps the last of repeated values
(``?category=a&category=b`` read as ``b``): a client that meant a list would get an answer to a
question it did not ask. Repeating a parameter is refused instead (422, naming it), like any
other query value of the wrong type.
"""

from __future__ import annotations

from collections import Counter

from fastapi import Request
from fastapi.exceptions import RequestValidationError

__all__ = ["single_valued_query"]


def single_valued_query(request: Request) -> None:
    """A dependency of every route: raises a validation error for repeated query parameters."""
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = sorted(name for name, n in counts.items() if n > 1)
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated_query_parameter",
                    "loc": ("query", name),
                    "msg": f"Expected one value for query parameter {name!r}, "
                    f"but got {counts[name]}",
                    "input": request.query_params.getlist(name),
                }
                for name in repeated
            ]
        )
