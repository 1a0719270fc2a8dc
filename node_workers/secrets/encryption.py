"""Secrets encrypted at rest: envelope encryption behind a small KMS interface.

A secret file ``NAME.enc`` in ``secrets_dir`` holds one JSON object: the value encrypted with
AES-256-GCM under a fresh random data key, and that data key *wrapped* by a
:class:`KeyManager` (a KMS). The secret's name is the GCM associated data, so a file renamed to
another secret's name does not decrypt. Nothing on disk is plaintext; the worker unwraps and
decrypts at each ``get`` (:class:`EncryptedFileSecretProvider`), so a re-encrypted file is picked
up without a restart.

:class:`LocalKeyManager` wraps with a 256-bit master key from the environment
(``REFLUX_SECRETS_KEY``, base64, or ``REFLUX_SECRETS_KEY_FILE``); a cloud KMS (AWS KMS
``Encrypt``/``Decrypt``, GCP KMS, Vault transit) implements the same two methods, and the files
stay the same apart from ``kms`` and ``key_id``. ``reflux secrets encrypt NAME`` writes a file,
``reflux secrets generate-key`` prints a new master key. docs/secrets.md, ADR 0048.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from node_workers.secrets.files import read_secret_file
from workflows.expressions import SECRET_NAME

__all__ = [
    "ENCRYPTED_SUFFIX",
    "EncryptedFileSecretProvider",
    "KeyManager",
    "LocalKeyManager",
    "decrypt_secret",
    "encrypt_secret",
    "generate_key",
    "key_manager_from_settings",
    "write_encrypted_secret",
]

ENCRYPTED_SUFFIX: Final = ".enc"
FORMAT: Final = "reflux-secret/1"
_NONCE_BYTES: Final = 12
_MAX_FILE_BYTES: Final = 2 * 1024 * 1024


@runtime_checkable
class KeyManager(Protocol):
    """A KMS: wraps and unwraps data keys; its master key never leaves it.

    ``context`` (the secret's name) is bound to the wrapped key as associated data, as AWS KMS's
    encryption context does. ``unwrap`` raises :class:`ConfigurationError` for a key it cannot
    unwrap (another master key, a tampered file); messages never contain key material.
    """

    kind: str
    key_id: str

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, key_id: str, context: bytes) -> bytes: ...


class LocalKeyManager:
    """A 256-bit master key held by this process (from ``REFLUX_SECRETS_KEY``)."""

    kind = "local"

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ConfigurationError(
                "Expected secrets_key (REFLUX_SECRETS_KEY) to be 32 bytes, base64-encoded "
                f"(`reflux secrets generate-key`), but it decodes to {len(master_key)} bytes"
            )
        self._aead = AESGCM(master_key)
        # Names the key without revealing it: a file says which key it needs.
        self.key_id = hashlib.sha256(b"reflux-secrets-key:" + master_key).hexdigest()[:16]

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, key_id: str, context: bytes) -> bytes:
        if key_id != self.key_id:
            raise ConfigurationError(
                f"Expected a file encrypted with secrets key {self.key_id}, but it needs key "
                f"{key_id} (another REFLUX_SECRETS_KEY)"
            )
        try:
            return self._aead.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], context)
        except InvalidTag:
            raise ConfigurationError(
                "Expected the data key to unwrap with the secrets key, but it does not "
                "(the file was altered or belongs to another secret name)"
            ) from None

    def __repr__(self) -> str:
        return f"LocalKeyManager(key_id={self.key_id})"


def generate_key() -> str:
    """A new master key, as ``REFLUX_SECRETS_KEY`` takes it."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def key_manager_from_settings(settings: Settings) -> KeyManager | None:
    """The local key manager of ``secrets_key`` / ``secrets_key_file``; ``None`` when unset."""
    if settings.secrets_key_file is not None:
        try:
            text = settings.secrets_key_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"Expected secrets_key_file (REFLUX_SECRETS_KEY_FILE) "
                f"{settings.secrets_key_file} to be readable, but: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
    elif settings.secrets_key is not None:
        text = settings.secrets_key.get_secret_value().strip()
    else:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            "Expected secrets_key (REFLUX_SECRETS_KEY) to be base64 "
            "(`reflux secrets generate-key`), but it is not"
        ) from None
    return LocalKeyManager(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encrypt_secret(name: str, value: str, kms: KeyManager) -> bytes:
    """The bytes of ``NAME.enc`` for ``value``."""
    _check_name(name)
    context = name.encode()
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, value.encode("utf-8"), context)
    document = {
        "format": FORMAT,
        "name": name,
        "cipher": "AES-256-GCM",
        "kms": kms.kind,
        "key_id": kms.key_id,
        "wrapped_key": _b64(kms.wrap(data_key, context)),
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }
    return (json.dumps(document, indent=1) + "\n").encode()


def decrypt_secret(name: str, blob: bytes, kms: KeyManager, *, source: str = "") -> str:
    """The value in ``NAME.enc``; :class:`ConfigurationError` (no value in it) when it cannot."""
    where = source or f"{name}{ENCRYPTED_SUFFIX}"
    try:
        document = json.loads(blob)
        if document.get("format") != FORMAT:
            raise ValueError("format")
        context = name.encode()
        if document.get("kms") != kms.kind:
            raise ConfigurationError(
                f"Expected {where} to be wrapped by the {kms.kind!r} key manager, but it names "
                f"{document.get('kms')!r}"
            )
        data_key = kms.unwrap(
            base64.b64decode(document["wrapped_key"]), str(document["key_id"]), context
        )
        nonce = base64.b64decode(document["nonce"])
        ciphertext = base64.b64decode(document["ciphertext"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"Cannot decrypt {where}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ConfigurationError(
            f"Expected {where} to be a file written by `reflux secrets encrypt`, but it is not"
        ) from None
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, context).decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise ConfigurationError(
            f"Cannot decrypt {where}: its ciphertext was altered or belongs to another name"
        ) from None


def _check_name(name: str) -> None:
    if not SECRET_NAME.fullmatch(name):
        raise ConfigurationError(
            f"Expected a secret name matching {SECRET_NAME.pattern}, but got {name!r}"
        )


def write_encrypted_secret(directory: Path, name: str, value: str, kms: KeyManager) -> Path:
    """Write ``directory/NAME.enc`` (mode 0600) atomically; returns its path."""
    target = directory / f"{name}{ENCRYPTED_SUFFIX}"
    blob = encrypt_secret(name, value, kms)
    temporary = directory / f".{name}{ENCRYPTED_SUFFIX}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)  # readers see the old file or the new one, never half
    finally:
        temporary.unlink(missing_ok=True)
    return target


class EncryptedFileSecretProvider:
    """``NAME.enc`` files in a folder, decrypted at each ``get`` with the key manager.

    Without a key manager a present ``NAME.enc`` is a configuration error (never "not here":
    a chain would otherwise fall through to an older plaintext value).
    """

    def __init__(self, directory: Path, kms: KeyManager | None) -> None:
        self.directory = Path(directory)
        self.kms = kms

    def get(self, name: str) -> str | None:
        if not SECRET_NAME.fullmatch(name):
            return None
        path = self.directory / f"{name}{ENCRYPTED_SUFFIX}"
        blob = read_secret_file(path, _MAX_FILE_BYTES)
        if blob is None:
            return None
        if self.kms is None:
            raise ConfigurationError(
                f"Expected secrets_key (REFLUX_SECRETS_KEY) or secrets_key_file to decrypt "
                f"{path}, but neither is set"
            )
        return decrypt_secret(name, blob, self.kms, source=str(path))

    def __repr__(self) -> str:
        return f"EncryptedFileSecretProvider({str(self.directory)!r}, {self.kms!r})"
