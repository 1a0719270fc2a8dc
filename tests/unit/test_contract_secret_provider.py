"""The secrets port (``node_workers.secrets.SecretProvider``) behaves the same on every adapter.

Each adapter comes with the way an operator sets a secret for it:

- ``env``: ``REFLUX_SECRET_<NAME>`` in the process environment;
- ``env-mapping``: the same provider over an explicit mapping (how tests and embedders use it);
- ``dir``: a folder with one file per secret (a mounted Kubernetes Secret: ``echo v > NAME``);
- ``yaml`` / ``json``: one mapping file ``NAME: value``;
- ``chain``: a chain whose first provider (an empty folder) does not have the names;
- ``worker``: the provider a worker builds from its settings (``resolver_from_settings``).

Every test runs against all of them with the same body. What only one adapter does (a folder
refusing path-like names, a mapping file's parse errors, a chain's order) stays in
test_secrets.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from foundation.settings import Settings
from node_workers.secrets import (
    ChainSecretProvider,
    EnvSecretProvider,
    FileSecretProvider,
    SecretProvider,
    resolver_from_settings,
)

TOKEN = "tok-9f2c81 a+b/c=d"  # blanks, + / = : every URL encoding differs from the raw text
VALUES = {
    "API_TOKEN": TOKEN,
    "QUOTED": 'it\'s "quoted" and back\\slashed: {{ not a template }}',
    "UNICODE": "pässwörd-密码",
    "PADDED": "  blanks around  ",
    "PEM": "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----",
}


ASTRAL = "key-🔑-\U0001d518"  # a key emoji and MATHEMATICAL FRAKTUR CAPITAL U
"""Characters beyond U+FFFF: JSON writers escape them as surrogate pairs (``\\ud83d\\udd11``)."""


@dataclass
class Source:
    """A provider and how an operator writes to what it reads."""

    kind: str
    provider: SecretProvider
    write: Callable[[dict[str, str]], None]
    """Replace every secret with these (names absent from the dict are removed)."""
    current: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: str) -> None:
        self.current[name] = value
        self.write(dict(self.current))

    def remove(self, name: str) -> None:
        del self.current[name]
        self.write(dict(self.current))


def _env(monkeypatch: pytest.MonkeyPatch) -> Source:
    written: set[str] = set()

    def write(values: dict[str, str]) -> None:
        for name in written - set(values):
            monkeypatch.delenv(f"REFLUX_SECRET_{name}")
        for name, value in values.items():
            monkeypatch.setenv(f"REFLUX_SECRET_{name}", value)
        written.clear()
        written.update(values)

    return Source("env", EnvSecretProvider(), write)


def _env_mapping() -> Source:
    environ: dict[str, str] = {}

    def write(values: dict[str, str]) -> None:
        environ.clear()
        environ.update({f"REFLUX_SECRET_{k}": v for k, v in values.items()})

    return Source("env-mapping", EnvSecretProvider(environ), write)


def _folder_writer(folder: Path) -> Callable[[dict[str, str]], None]:
    def write(values: dict[str, str]) -> None:
        for path in folder.iterdir():
            if path.name not in values and path.name.isupper():
                path.unlink()
        for name, value in values.items():
            staged = folder / f".{name}.new"
            staged.write_text(value + "\n")  # as `echo value > NAME` writes it
            staged.replace(folder / name)  # swapped atomically, as Kubernetes does

    return write


def _mapping_writer(path: Path, dump: Callable[[dict[str, str]], str]) -> Callable[..., None]:
    ticks = iter(range(1, 1_000_000))

    def write(values: dict[str, str]) -> None:
        path.write_text(dump(values))
        # The provider re-reads the file when its mtime changes; two writes within one clock
        # tick keep it, so each write gets its own (as a later atomic replace would).
        tick = next(ticks)
        os.utime(path, (tick, tick))

    return write


@pytest.fixture(params=["env", "env-mapping", "dir", "yaml", "json", "chain", "worker"])
def source(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Source]:
    kind = request.param
    folder = tmp_path / "secrets"
    folder.mkdir()
    if kind == "env":
        yield _env(monkeypatch)
    elif kind == "env-mapping":
        yield _env_mapping()
    elif kind == "dir":
        yield Source(kind, FileSecretProvider(folder), _folder_writer(folder))
    elif kind == "yaml":
        path = folder / "secrets.yaml"
        yield Source(
            kind,
            FileSecretProvider(path),
            _mapping_writer(path, lambda v: yaml.safe_dump(v, allow_unicode=True)),
        )
    elif kind == "json":
        path = folder / "secrets.json"
        yield Source(kind, FileSecretProvider(path), _mapping_writer(path, json.dumps))
    elif kind == "chain":
        behind = _env_mapping()
        empty = tmp_path / "empty"
        empty.mkdir()
        chain = ChainSecretProvider(FileSecretProvider(empty), behind.provider)
        yield Source(kind, chain, behind.write)
    else:
        (folder / "grants.yaml").write_text("API_TOKEN: ['*']\n")
        settings = Settings(secrets_dir=folder)
        yield Source(kind, resolver_from_settings(settings).provider, _folder_writer(folder))


def test_it_is_a_secret_provider(source: Source) -> None:
    assert isinstance(source.provider, SecretProvider)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_a_set_secret_is_returned_exactly(source: Source, name: str) -> None:
    source.set(name, VALUES[name])
    assert source.provider.get(name) == VALUES[name]


def test_a_secret_beyond_the_basic_plane_is_returned_exactly(source: Source) -> None:
    # JSON files used to be read by YAML, which split json.dumps' surrogate-pair escapes into
    # two lone surrogates.
    source.set("EMOJI", ASTRAL)
    # Compared as ascii(): exact all the same, and a wrong value with lone surrogates cannot
    # be sent to the xdist controller as text (it cannot be encoded as UTF-8).
    assert ascii(source.provider.get("EMOJI")) == ascii(ASTRAL)


def test_several_secrets_are_independent(source: Source) -> None:
    for name, value in VALUES.items():
        source.set(name, value)
    assert {name: source.provider.get(name) for name in VALUES} == VALUES


def test_an_unknown_name_is_none(source: Source) -> None:
    source.set("API_TOKEN", TOKEN)
    assert source.provider.get("NOPE") is None


def test_a_rotated_value_is_read_without_a_new_provider(source: Source) -> None:
    source.set("API_TOKEN", TOKEN)
    assert source.provider.get("API_TOKEN") == TOKEN
    source.set("API_TOKEN", "rotated")
    assert source.provider.get("API_TOKEN") == "rotated"


def test_a_removed_secret_is_none(source: Source) -> None:
    source.set("API_TOKEN", TOKEN)
    source.set("DB", "pw")
    assert source.provider.get("API_TOKEN") == TOKEN
    source.remove("API_TOKEN")
    assert source.provider.get("API_TOKEN") is None
    assert source.provider.get("DB") == "pw"


def test_repr_never_shows_a_value(source: Source) -> None:
    for name, value in VALUES.items():
        source.set(name, value)
        assert source.provider.get(name) == value  # read, so a caching provider holds it
    shown = repr(source.provider)
    for value in VALUES.values():
        assert value not in shown
    assert TOKEN.split(maxsplit=1)[0] not in shown
