"""Schema names as SQL identifiers.

Every read-model table lives in one configurable Postgres schema (tests use a fresh one each).
Identifiers cannot be bound as query parameters, so the schema name is validated against a strict
pattern and double-quoted before it is spliced into SQL text; nothing else is ever spliced.
"""

from __future__ import annotations

import re
from typing import Final

from foundation.errors import ConfigurationError

__all__ = ["DEFAULT_SCHEMA", "quote_schema", "table", "validate_schema"]

DEFAULT_SCHEMA: Final = "reflux"
# Lowercase only: an unquoted mention in psql or a migration then means the same schema.
_SCHEMA: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_schema(schema: str) -> str:
    if not _SCHEMA.fullmatch(schema) or schema.startswith("pg_"):
        raise ConfigurationError(
            "Expected a Postgres schema name of 1-63 lowercase letters, digits or '_' "
            f"(not starting with a digit or 'pg_'), but got {schema!r}"
        )
    return schema


def quote_schema(schema: str) -> str:
    return f'"{validate_schema(schema)}"'


def table(schema: str, name: str) -> str:
    """``"schema".name`` for a read-model table (``name`` is always a literal in this package)."""
    return f"{quote_schema(schema)}.{name}"
