"""``reflux secrets``: encrypt secret files at rest (docs/secrets.md#encrypted-at-rest).

- ``reflux secrets generate-key`` prints a new master key for ``REFLUX_SECRETS_KEY``;
- ``reflux secrets encrypt NAME [--from FILE] [--dir DIR] [--remove-plaintext]`` writes
  ``DIR/NAME.enc`` (default ``secrets_dir``) from a file, or from standard input, with the key of
  the settings; ``--remove-plaintext`` deletes ``DIR/NAME`` afterwards (after checking that the
  new file decrypts to the same value).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from foundation.errors import ConfigurationError
from foundation.settings import get_settings
from node_workers.secrets.encryption import (
    EncryptedFileSecretProvider,
    generate_key,
    key_manager_from_settings,
    write_encrypted_secret,
)
from workflows.expressions import SECRET_NAME

__all__ = ["add_secrets_commands"]


def _generate_key(_: argparse.Namespace) -> int:
    print(generate_key())
    return 0


def _read_value(source: str | None) -> str:
    if source is None or source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"Expected --from {source} to be a readable UTF-8 file, but: {type(exc).__name__}"
            ) from None
    # Same rule as plaintext secret files: one trailing newline is not part of the value.
    return text.removesuffix("\n").removesuffix("\r")


def _encrypt(args: argparse.Namespace) -> int:
    if not SECRET_NAME.fullmatch(args.name):
        raise ConfigurationError(
            f"Expected a secret name matching {SECRET_NAME.pattern}, but got {args.name!r}"
        )
    settings = get_settings()
    directory = Path(args.dir) if args.dir else settings.secrets_dir
    if directory is None or not directory.is_dir():
        raise ConfigurationError(
            "Expected --dir or secrets_dir (REFLUX_SECRETS_DIR) to name a directory, "
            f"but got {directory}"
        )
    kms = key_manager_from_settings(settings)
    if kms is None:
        raise ConfigurationError(
            "Expected secrets_key (REFLUX_SECRETS_KEY) or secrets_key_file to encrypt with, "
            "but neither is set (`reflux secrets generate-key` makes one)"
        )
    source = args.source
    if source is None and args.remove_plaintext:
        source = str(directory / args.name)
    value = _read_value(source)
    if not value:
        raise ConfigurationError(f"Expected a value for secret {args.name}, but it is empty")
    path = write_encrypted_secret(directory, args.name, value, kms)
    if EncryptedFileSecretProvider(directory, kms).get(args.name) != value:
        raise ConfigurationError(f"Expected {path} to decrypt to the value just written")
    if args.remove_plaintext:
        (directory / args.name).unlink(missing_ok=True)
    print(f"wrote {path} (key {kms.key_id})")
    return 0


def add_secrets_commands(subparsers: Any) -> argparse.ArgumentParser:
    secrets: argparse.ArgumentParser = subparsers.add_parser(
        "secrets", help="encrypted secret files (NAME.enc in secrets_dir)"
    )
    actions: Any = secrets.add_subparsers(dest="secrets_command", required=True)
    key = actions.add_parser("generate-key", help="print a new REFLUX_SECRETS_KEY")
    key.set_defaults(handler=_generate_key)
    encrypt = actions.add_parser(
        "encrypt", help="write NAME.enc from a file or standard input with REFLUX_SECRETS_KEY"
    )
    encrypt.add_argument("name", help="the secret's name, e.g. API_TOKEN")
    encrypt.add_argument(
        "--from",
        dest="source",
        help="file holding the value (default: standard input; with --remove-plaintext: DIR/NAME)",
    )
    encrypt.add_argument("--dir", help="where NAME.enc goes (default: REFLUX_SECRETS_DIR)")
    encrypt.add_argument(
        "--remove-plaintext", action="store_true", help="delete DIR/NAME once NAME.enc decrypts"
    )
    encrypt.set_defaults(handler=_encrypt)
    return secrets
