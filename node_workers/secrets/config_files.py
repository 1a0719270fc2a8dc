"""Reading the operator's YAML/JSON files (secret mappings, grants) without quoting them.

Both files live in ``secrets_dir`` and a secrets mapping holds values, so a parse error must not
echo the offending line the way YAML's own messages do: errors give the position only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from foundation.errors import ConfigurationError
from node_workers.secrets.errors import SecretProviderError

__all__ = ["load_config_file"]


def load_config_file(path: Path, what: str) -> Any:
    """YAML/JSON file contents. Parse errors give the position only: YAML's own messages quote
    the offending line, which in a secrets file is a value."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretProviderError(
            f"Expected to read {what} {path}, but: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"Expected {what} {path} to be UTF-8 text") from None
    if path.suffix == ".json":
        # YAML reads JSON too, but splits a surrogate-pair escape ("\\ud83d\\ude00", what
        # json.dumps writes for characters beyond U+FFFF) into two lone surrogates.
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"Expected {what} {path} to be JSON, but it does not parse "
                f"(line {exc.lineno}, column {exc.colno})"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigurationError(
            f"Expected {what} {path} to be YAML or JSON, but it does not parse{where}"
        ) from None
