"""Worker-side secrets: providers, grants, resolution and redaction (no services needed)."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from node_workers.secrets import (
    REDACTED,
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    GrantsFile,
    Redactor,
    SecretGrants,
    SecretProviderError,
    SecretResolver,
    SecretUnavailable,
    install_log_redaction,
    resolver_from_settings,
    secret_names,
)
from schemas.models import ErrorInfo

TOKEN = "tok-9f2c81 a+b/c=d"  # blanks, + / = : every URL encoding differs from the raw text


def _resolver(values: dict[str, str], grants: dict[str, Any]) -> SecretResolver:
    return SecretResolver(
        EnvSecretProvider({f"REFLUX_SECRET_{k}": v for k, v in values.items()}),
        SecretGrants.from_mapping(grants, source="test"),
    )


# -- providers -------------------------------------------------------------------------------------
# What every provider does (values exact, unknown names None, rotation, removal, repr without
# values) is the contract suite test_contract_secret_provider.py, run on each of them; here is
# what only one of them does.


def test_file_provider_directory(tmp_path: Path) -> None:
    (tmp_path / "API_TOKEN").write_text(TOKEN + "\n")
    (tmp_path / "PEM").write_text("line1\nline2\n\n")
    (tmp_path / "grants.yaml").write_text("API_TOKEN: '*'\n")
    (tmp_path / "sub").mkdir()
    provider = FileSecretProvider(tmp_path)
    assert provider.get("API_TOKEN") == TOKEN  # one trailing newline dropped
    assert provider.get("PEM") == "line1\nline2\n"
    assert provider.get("MISSING") is None
    # Only secret-shaped names are files: never a path out of the folder, never the grants.
    assert provider.get("../API_TOKEN") is None
    assert provider.get("grants.yaml") is None
    assert provider.get("sub") is None
    (tmp_path / "API_TOKEN").write_text("rotated")
    assert provider.get("API_TOKEN") == "rotated"


def test_file_provider_refuses_huge_and_binary_files(tmp_path: Path) -> None:
    (tmp_path / "BIG").write_bytes(b"x" * (1024 * 1024 + 1))
    (tmp_path / "BIN").write_bytes(b"\xff\xfe")
    provider = FileSecretProvider(tmp_path)
    with pytest.raises(ConfigurationError, match="at most"):
        provider.get("BIG")
    with pytest.raises(ConfigurationError, match="UTF-8"):
        provider.get("BIN")


def test_file_provider_mapping_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(f"API_TOKEN: '{TOKEN}'\nDB: pw\n")
    provider = FileSecretProvider(path)
    assert (provider.get("API_TOKEN"), provider.get("DB"), provider.get("X")) == (TOKEN, "pw", None)
    path.write_text(json.dumps({"DB": "new"}))
    os.utime(path, (1, 1))  # a different mtime even within the same clock tick
    assert provider.get("DB") == "new" and provider.get("API_TOKEN") is None
    assert FileSecretProvider(tmp_path / "absent.yaml").get("DB") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("API_TOKEN: [s3cr3t-value\n", r"does not parse \(line"),
        ("- s3cr3t-value\n", "mapping of NAME: value"),
        ("API_TOKEN: 12345678\n", "'API_TOKEN' in .* to be a string, but it is a int"),
        ("lower: s3cr3t-value\n", "match"),
    ],
)
def test_file_provider_mapping_errors_never_quote_values(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        FileSecretProvider(path).get("API_TOKEN")
    assert "s3cr3t-value" not in str(caught.value) and "12345678" not in str(caught.value)


def test_chain_asks_in_order() -> None:
    first = EnvSecretProvider({"REFLUX_SECRET_A": "one"})
    second = EnvSecretProvider({"REFLUX_SECRET_A": "two", "REFLUX_SECRET_B": "bee"})
    chain = ChainSecretProvider(first, second)
    assert (chain.get("A"), chain.get("B"), chain.get("C")) == ("one", "bee", None)
    assert ChainSecretProvider().get("A") is None


# -- grants ----------------------------------------------------------------------------------------


def test_grants_match_workflow_ids_by_glob() -> None:
    grants = SecretGrants.from_mapping(
        {"API_TOKEN": ["billing-*", "demo"], "ALL": "*"}, source="test"
    )
    assert grants.allows("API_TOKEN", "billing-eu") and grants.allows("API_TOKEN", "demo")
    assert not grants.allows("API_TOKEN", "demo-2") and not grants.allows("API_TOKEN", "x")
    assert grants.allows("ALL", "anything")
    assert not grants.allows("UNLISTED", "demo")
    assert not SecretGrants().allows("API_TOKEN", "demo")


@pytest.mark.parametrize(
    "data", [["API_TOKEN"], {"lower": ["*"]}, {"A": [1]}, {"A": [""]}, {"A": {"x": 1}}]
)
def test_malformed_grants_are_configuration_errors(data: Any) -> None:
    with pytest.raises(ConfigurationError):
        SecretGrants.from_mapping(data, source="test")


def test_grants_file_reloads_and_a_missing_file_grants_nothing(tmp_path: Path) -> None:
    path = tmp_path / "grants.yaml"
    grants = GrantsFile(path)
    assert not grants.current().allows("A", "wf") and "missing" in grants.current().source
    path.write_text("A: [wf]\n")
    assert grants.current().allows("A", "wf")
    path.write_text("A: [other]\n")
    os.utime(path, (1, 1))
    assert not grants.current().allows("A", "wf")


# -- resolution ------------------------------------------------------------------------------------


def test_resolve_whole_mixed_nested_and_keys_untouched() -> None:
    resolver = _resolver({"API_TOKEN": TOKEN, "DB": "pw"}, {"API_TOKEN": "wf", "DB": "wf"})
    params = {
        "whole": " {{ secrets.API_TOKEN }} ",
        "mixed": "Bearer {{secrets.API_TOKEN}} / {{ secrets.DB }}",
        "list": [1, None, "{{ secrets.DB }}", {"{{ secrets.DB }}": "{{ secrets.DB }}"}],
        "other": "{{ inputs.x }} and {{ secrets.lower }}",
    }
    assert secret_names(params) == ["API_TOKEN", "DB"]
    assert resolver.resolve(params, workflow_id="wf") == {
        "whole": TOKEN,
        "mixed": f"Bearer {TOKEN} / pw",
        "list": [1, None, "pw", {"{{ secrets.DB }}": "pw"}],
        "other": "{{ inputs.x }} and {{ secrets.lower }}",
    }
    assert len(resolver.redactor) == 2
    assert resolver.resolve({"a": 1}, workflow_id="nobody") == {"a": 1}


def test_ungranted_secret_is_unavailable_and_nothing_is_resolved() -> None:
    resolver = _resolver({"API_TOKEN": TOKEN, "OTHER": "other-value"}, {"API_TOKEN": ["wf"]})
    params = {"a": "{{ secrets.API_TOKEN }}", "b": "{{ secrets.OTHER }}"}
    with pytest.raises(SecretUnavailable) as caught:
        resolver.resolve(params, workflow_id="wf")
    error = caught.value
    assert (error.name, error.workflow_id, error.error_class) == (
        "OTHER",
        "wf",
        "SecretUnavailable",
    )
    assert not error.retryable
    assert "'OTHER'" in str(error) and "not granted" in str(error)
    assert "other-value" not in str(error) and TOKEN not in str(error)
    with pytest.raises(SecretUnavailable, match="not granted"):
        resolver.resolve({"a": "{{ secrets.API_TOKEN }}"}, workflow_id="wf-2")


def test_granted_but_missing_or_empty_is_unavailable() -> None:
    resolver = _resolver({"EMPTY": ""}, {"MISSING": "*", "EMPTY": "*"})
    with pytest.raises(SecretUnavailable, match=r"'MISSING'.*granted but not set"):
        resolver.resolve("{{ secrets.MISSING }}", workflow_id="wf")
    with pytest.raises(SecretUnavailable, match=r"'EMPTY'.*empty"):
        resolver.resolve("{{ secrets.EMPTY }}", workflow_id="wf")


class _Broken:
    def get(self, name: str) -> str | None:
        raise RuntimeError("vault is down")


def test_a_failing_provider_is_retryable() -> None:
    resolver = SecretResolver(_Broken(), SecretGrants.from_mapping({"A": "*"}, source="t"))
    with pytest.raises(SecretProviderError) as caught:
        resolver.resolve("{{ secrets.A }}", workflow_id="wf")
    assert caught.value.retryable and "RuntimeError" in str(caught.value)


def test_resolver_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "FROM_FILE").write_text("file-value\n")
    (tmp_path / "secrets.json").write_text(json.dumps({"FROM_MAP": "map-value"}))
    (tmp_path / "grants.yaml").write_text("FROM_FILE: wf\nFROM_MAP: wf\nFROM_ENV: 'w*'\n")
    monkeypatch.setenv("REFLUX_SECRET_FROM_ENV", "env-value")
    monkeypatch.setenv("REFLUX_SECRET_FROM_FILE", "shadowed")
    resolver = resolver_from_settings(Settings(secrets_dir=tmp_path))
    params = ["{{ secrets.FROM_FILE }}", "{{ secrets.FROM_MAP }}", "{{ secrets.FROM_ENV }}"]
    assert resolver.resolve(params, workflow_id="wf") == ["file-value", "map-value", "env-value"]

    without = resolver_from_settings(Settings(secrets_dir=None))
    with pytest.raises(SecretUnavailable, match="not granted"):
        without.resolve("{{ secrets.FROM_ENV }}", workflow_id="wf")
    with pytest.raises(ConfigurationError, match="directory"):
        resolver_from_settings(Settings(secrets_dir=tmp_path / "FROM_FILE"))
    (tmp_path / "grants.yaml").write_text("FROM_FILE: [wf\n")
    with pytest.raises(ConfigurationError, match="does not parse"):
        resolver_from_settings(Settings(secrets_dir=tmp_path))


# -- redaction -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        TOKEN,
        quote(TOKEN, safe=""),
        quote(TOKEN),
        quote_plus(TOKEN),
        "tok-9f2c81%20a+b/c=d",  # what pydantic's URL normalisation leaves
        base64.b64encode(TOKEN.encode()).decode(),
        base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("="),
        json.dumps('q"uo\\te')[1:-1],
    ],
)
def test_redactor_covers_common_encodings(form: str) -> None:
    redactor = Redactor([TOKEN, 'q"uo\\te'])
    assert redactor.redact_text(f"before {form} after") == f"before {REDACTED} after"


def test_redactor_on_json_values_and_errors() -> None:
    redactor = Redactor(["s3cr3t", "s3cr3t-longer", "987654"])
    value = {
        "s3cr3t-key": ["a s3cr3t-longer b", 987654, 1.5, True, None],
        "nested": {"n": 9876543, "ok": "fine"},
    }
    assert redactor.redact(value) == {
        "***-key": ["a *** b", "***", 1.5, True, None],
        "nested": {"n": "***", "ok": "fine"},
    }
    error = ErrorInfo(error_class="Http5xx", message="GET /?t=s3cr3t failed", retryable=True)
    redacted = redactor.redact_error(error)
    assert redacted is not None and redacted.message == "GET /?t=*** failed"
    assert redacted.retryable and redacted.error_class == "Http5xx"
    assert Redactor().redact(value) is value


def test_multiline_secret_lines_are_redacted_on_their_own() -> None:
    pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----"
    redactor = Redactor([pem])
    assert redactor.redact_text("line: MIIBOgIBAAJBAKj34GkxFhD9.") == "line: ***."
    assert redactor.redact_text(f"<{pem}>") == "<***>"


def test_log_records_are_redacted_at_creation(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor()
    install_log_redaction(redactor)
    logger = logging.getLogger("tests.secrets.child")
    caplog.set_level(logging.DEBUG)
    logger.debug("before %s", "log-s3cr3t-1")  # not yet known: left as it is
    redactor.add("log-s3cr3t-1")
    logger.debug("url %s?t=%s", "http://x", "log-s3cr3t-1")
    try:
        raise ValueError("failed with log-s3cr3t-1 inside")
    except ValueError:
        logger.exception("crash %d", 7)
    logger.info("nothing secret %s", "here")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "before log-s3cr3t-1",
        "url http://x?t=***",
        "crash 7",
        "nothing secret here",
    ]
    assert caplog.records[3].args == ("here",)  # untouched records keep their args
    text = caplog.text.split("before log-s3cr3t-1", 1)[1]
    assert "log-s3cr3t-1" not in text
    assert "ValueError: failed with *** inside" in text
