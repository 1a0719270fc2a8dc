"""Finding and filling ``{{ secrets.NAME }}`` placeholders in a step's params.

The scheduler keeps placeholders as text (:mod:`workflows.expressions`), so the params a worker
loads are plain JSON with placeholders in their strings. Only string values are looked at, never
keys: a key is a name the definition chose, not a place for a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflows.expressions import SECRET_PLACEHOLDER

__all__ = ["secret_names", "substitute_secrets"]


def secret_names(params: Any) -> list[str]:
    """Names of the placeholders in a JSON value's strings (not keys), first occurrence order."""
    names: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if "{{" in value:
                for name in SECRET_PLACEHOLDER.findall(value):
                    if name not in names:
                        names.append(name)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(params)
    return names


def substitute_secrets(value: Any, secrets: Mapping[str, str]) -> Any:
    """``value`` with each placeholder replaced from ``secrets`` (which holds every name used).

    A string that is only a placeholder (blanks around it allowed) becomes the value, like a
    whole-value template; otherwise each placeholder is replaced in place.
    """
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = SECRET_PLACEHOLDER.fullmatch(value.strip())
        if whole is not None:  # like a whole-value template: surrounding blanks are dropped
            return secrets[whole.group(1)]
        return SECRET_PLACEHOLDER.sub(lambda m: secrets[m.group(1)], value)
    if isinstance(value, Mapping):
        return {key: substitute_secrets(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [substitute_secrets(item, secrets) for item in value]
    return value
