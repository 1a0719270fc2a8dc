"""Reading one secret file, bounded (pure I/O helper shared by the plaintext and the encrypted
file providers): a missing file is ``None``, an unreadable one a provider error, an oversized
one a configuration error -- never a partial value."""

from __future__ import annotations

from pathlib import Path

from foundation.errors import ConfigurationError
from node_workers.secrets.errors import SecretProviderError

__all__ = ["read_secret_file"]


def read_secret_file(path: Path, max_bytes: int) -> bytes | None:
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SecretProviderError(
            f"Expected to read secret file {path}, but: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > max_bytes:
        raise ConfigurationError(
            f"Expected secret file {path} to hold at most {max_bytes} bytes, but it is larger"
        )
    return data
