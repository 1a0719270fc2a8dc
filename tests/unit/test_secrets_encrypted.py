"""Secrets encrypted at rest: envelope files, the local key manager, the CLI and the worker's
resolver reading them (real files, real AES-GCM)."""

from __future__ import annotations

import base64
import io
import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from node_workers.secrets import (
    EncryptedFileSecretProvider,
    KeyManager,
    LocalKeyManager,
    resolver_from_settings,
)
from node_workers.secrets.encryption import (
    decrypt_secret,
    encrypt_secret,
    generate_key,
    key_manager_from_settings,
    write_encrypted_secret,
)
from reflux.cli import main

VALUE = "sk-live-5f2b7c1e9a4d8e3f0b6a"


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
def kms(key: str) -> LocalKeyManager:
    return LocalKeyManager(base64.b64decode(key))


def test_round_trip_and_no_plaintext_on_disk(tmp_path: Path, kms: LocalKeyManager) -> None:
    path = write_encrypted_secret(tmp_path, "API_TOKEN", VALUE, kms)
    raw = path.read_bytes()
    assert path.name == "API_TOKEN.enc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Neither the value nor any of its usual encodings is in the file.
    for form in (VALUE, base64.b64encode(VALUE.encode()).decode(), VALUE.encode().hex()):
        assert form.encode() not in raw
    assert json.loads(raw)["kms"] == "local" and json.loads(raw)["key_id"] == kms.key_id
    assert EncryptedFileSecretProvider(tmp_path, kms).get("API_TOKEN") == VALUE
    assert EncryptedFileSecretProvider(tmp_path, kms).get("OTHER") is None
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_each_encryption_is_fresh(kms: LocalKeyManager) -> None:
    first, second = encrypt_secret("A", VALUE, kms), encrypt_secret("A", VALUE, kms)
    assert first != second
    assert decrypt_secret("A", first, kms) == decrypt_secret("A", second, kms) == VALUE


def test_another_key_is_refused_by_id(kms: LocalKeyManager) -> None:
    blob = encrypt_secret("A", VALUE, kms)
    other = LocalKeyManager(base64.b64decode(generate_key()))
    with pytest.raises(ConfigurationError, match=f"needs key {kms.key_id}") as info:
        decrypt_secret("A", blob, other)
    assert VALUE not in str(info.value)


def test_a_file_renamed_to_another_secret_does_not_decrypt(
    tmp_path: Path, kms: LocalKeyManager
) -> None:
    (tmp_path / "DB_PASSWORD.enc").write_bytes(encrypt_secret("API_TOKEN", VALUE, kms))
    with pytest.raises(ConfigurationError, match="another secret name"):
        EncryptedFileSecretProvider(tmp_path, kms).get("DB_PASSWORD")


def test_tampered_ciphertext_is_refused(kms: LocalKeyManager) -> None:
    document = json.loads(encrypt_secret("A", VALUE, kms))
    data = bytearray(base64.b64decode(document["ciphertext"]))
    data[0] ^= 1
    document["ciphertext"] = base64.b64encode(bytes(data)).decode()
    with pytest.raises(ConfigurationError, match="altered"):
        decrypt_secret("A", json.dumps(document).encode(), kms)


def test_garbage_is_a_clear_error(kms: LocalKeyManager) -> None:
    with pytest.raises(ConfigurationError, match="written by `reflux secrets encrypt`"):
        decrypt_secret("A", b"plain text", kms)


def test_encrypted_file_without_a_key_names_the_setting(
    tmp_path: Path, kms: LocalKeyManager
) -> None:
    write_encrypted_secret(tmp_path, "A", VALUE, kms)
    with pytest.raises(ConfigurationError, match=r"secrets_key \(REFLUX_SECRETS_KEY\)"):
        EncryptedFileSecretProvider(tmp_path, None).get("A")


@pytest.mark.parametrize(
    ("value", "message"), [("not base64!", "to be base64"), ("AAAA", "decodes to 3 bytes")]
)
def test_bad_keys_name_the_setting(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        key_manager_from_settings(Settings(secrets_key=SecretStr(value)))


def test_key_file_and_protocol(tmp_path: Path, key: str) -> None:
    (tmp_path / "key").write_text(key + "\n")
    manager = key_manager_from_settings(Settings(secrets_key_file=tmp_path / "key"))
    assert isinstance(manager, KeyManager)
    assert key not in repr(manager)
    assert key_manager_from_settings(Settings()) is None


class _RecordingKms:
    """Another KeyManager (what a cloud KMS adapter looks like): the format does not care."""

    kind = "recording"
    key_id = "arn:aws:kms:test"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        self.calls.append(f"wrap {context.decode()}")
        return data_key[::-1]

    def unwrap(self, wrapped: bytes, key_id: str, context: bytes) -> bytes:
        self.calls.append(f"unwrap {context.decode()} {key_id}")
        return wrapped[::-1]


def test_a_pluggable_kms_is_used_for_the_data_key(kms: LocalKeyManager) -> None:
    other = _RecordingKms()
    blob = encrypt_secret("A", VALUE, other)
    assert decrypt_secret("A", blob, other) == VALUE
    assert other.calls == ["wrap A", "unwrap A arn:aws:kms:test"]
    with pytest.raises(ConfigurationError, match="wrapped by the 'local' key manager"):
        decrypt_secret("A", blob, kms)


def test_cli_encrypts_and_the_worker_reads_it(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "grants.yaml").write_text("API_TOKEN: [billing]\n")
    (secrets_dir / "API_TOKEN").write_text(VALUE + "\n")
    monkeypatch.setenv("REFLUX_SECRETS_DIR", str(secrets_dir))
    monkeypatch.setenv("REFLUX_SECRETS_KEY", key)
    from foundation import settings as settings_module

    settings_module.get_settings.cache_clear()
    try:
        assert main(["secrets", "encrypt", "API_TOKEN", "--remove-plaintext"]) == 0
    finally:
        settings_module.get_settings.cache_clear()
    assert "API_TOKEN.enc" in capsys.readouterr().out
    assert sorted(p.name for p in secrets_dir.iterdir()) == ["API_TOKEN.enc", "grants.yaml"]
    assert VALUE.encode() not in (secrets_dir / "API_TOKEN.enc").read_bytes()

    settings = Settings(secrets_dir=secrets_dir, secrets_key=SecretStr(key))
    resolved = resolver_from_settings(settings).resolve(
        {"headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"}}, workflow_id="billing"
    )
    assert resolved == {"headers": {"Authorization": f"Bearer {VALUE}"}}
    # Without the key the worker refuses instead of falling back to anything else.
    monkeypatch.delenv("REFLUX_SECRETS_KEY")
    with pytest.raises(ConfigurationError, match="REFLUX_SECRETS_KEY"):
        resolver_from_settings(Settings(secrets_dir=secrets_dir)).resolve(
            {"t": "{{ secrets.API_TOKEN }}"}, workflow_id="billing"
        )


def test_cli_reads_standard_input(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFLUX_SECRETS_KEY", key)
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    from foundation import settings as settings_module

    settings_module.get_settings.cache_clear()
    try:
        assert main(["secrets", "encrypt", "DB_PASSWORD", "--dir", str(tmp_path)]) == 0
        assert main(["secrets", "encrypt", "bad-name", "--dir", str(tmp_path)]) == 2
    finally:
        settings_module.get_settings.cache_clear()
    kms = LocalKeyManager(base64.b64decode(key))
    assert EncryptedFileSecretProvider(tmp_path, kms).get("DB_PASSWORD") == "from-stdin"
