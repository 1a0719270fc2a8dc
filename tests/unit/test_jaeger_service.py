"""The local Jaeger's ports and config (no process, no build)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foundation.settings import Settings
from infra.services.base import ServiceError
from infra.services.jaeger import INFRA, PACKAGE, Jaeger


def test_ports_come_from_the_settings_and_stay_on_loopback(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        jaeger_otlp_url="http://127.0.0.1:24318",
        jaeger_query_url="http://127.0.0.1:26686",
    )
    assert Jaeger(settings)._ports() == {
        "REFLUX_JAEGER_OTLP_HTTP_PORT": 24318,
        "REFLUX_JAEGER_QUERY_PORT": 26686,
        "REFLUX_JAEGER_QUERY_GRPC_PORT": 26687,
        "REFLUX_JAEGER_HEALTH_PORT": 26688,
    }
    with pytest.raises(ServiceError, match="loopback"):
        Jaeger(Settings(data_dir=tmp_path, jaeger_query_url="http://0.0.0.0:16687"))._ports()


def test_the_config_binds_every_endpoint_to_loopback_from_the_environment() -> None:
    config = (INFRA / "jaeger.yaml").read_text()
    endpoints = re.findall(r"^\s+endpoint: (\S+)", config, re.MULTILINE)
    assert len(endpoints) == 4
    assert all(e.startswith("127.0.0.1:${env:REFLUX_JAEGER_") for e in endpoints)


def test_go_mod_pins_jaeger_as_a_tool() -> None:
    go_mod = (INFRA / "go.mod").read_text()
    assert f"tool {PACKAGE}" in go_mod
    assert re.search(r"github.com/jaegertracing/jaeger v1\.75\.0", go_mod)
