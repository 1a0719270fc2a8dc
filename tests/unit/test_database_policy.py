"""database.query's database policy, without a database: which DSNs it accepts, refuses and why
(node_workers/nodes/database_policy.py). The real attempts are in
tests/integration/test_node_database.py."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from foundation.settings import Settings
from node_workers.node import NodeError, validate_params
from node_workers.nodes.database_policy import DatabaseTarget, PlatformDatabase, target_of
from node_workers.nodes.database_query import DatabaseQueryNode
from node_workers.secrets import SecretUnavailable

PLATFORM = "postgresql://reflux@127.0.0.1:15432/reflux"
ORDERS = "postgresql://app:orders-pw-123@db.example:6543/orders"


def _node(tmp_path: Path, *, grants: str = "ORDERS_DSN: [shop-*]\n") -> DatabaseQueryNode:
    (tmp_path / "ORDERS_DSN").write_text(ORDERS)
    (tmp_path / "PLATFORM_DSN").write_text(PLATFORM)
    (tmp_path / "databases.yaml").write_text("orders: ORDERS_DSN\nplatform: PLATFORM_DSN\n")
    (tmp_path / "grants.yaml").write_text(grants + "PLATFORM_DSN: ['*']\n")
    node = DatabaseQueryNode()
    node.bind(Settings(secrets_dir=tmp_path, postgres_dsn=PLATFORM))
    return node


def _dsn(node: DatabaseQueryNode, raw: dict[str, Any], workflow: str = "shop-1") -> str:
    params = validate_params(node, {"sql": "SELECT 1", **raw})
    return asyncio.run(node.resolve_dsn(params, workflow))


def _policy_error(node: DatabaseQueryNode, raw: dict[str, Any], workflow: str = "shop-1") -> str:
    with pytest.raises(NodeError) as info:
        _dsn(node, raw, workflow)
    assert info.value.error_class == "DatabasePolicy" and not info.value.retryable
    return str(info.value)


def test_a_configured_connection_resolves_to_its_secret(tmp_path: Path) -> None:
    assert _dsn(_node(tmp_path), {"connection": "orders"}) == ORDERS


def test_an_unknown_connection_is_refused_naming_the_rule(tmp_path: Path) -> None:
    message = _policy_error(_node(tmp_path), {"connection": "billing"})
    assert "'billing'" in message and "configured-connection" in message
    assert "['orders', 'platform']" in message


def test_a_connection_whose_secret_is_not_granted_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SecretUnavailable):
        _dsn(_node(tmp_path), {"connection": "orders"}, workflow="other-wf")


def test_a_dsn_is_accepted_only_for_a_configured_target(tmp_path: Path) -> None:
    node = _node(tmp_path)
    same = "host=db.example port=6543 dbname=orders user=app password=orders-pw-123"
    assert _dsn(node, {"dsn": same}) == same
    message = _policy_error(node, {"dsn": "postgresql://app:x@db.example:6543/other"})
    assert "app@db.example:6543/other" in message and "configured-connection" in message
    # The same DSN from a workflow the connection's secret is not granted to: refused.
    _policy_error(node, {"dsn": same}, workflow="other-wf")


def test_without_a_secrets_folder_nothing_is_reachable() -> None:
    node = DatabaseQueryNode()
    node.bind(Settings(secrets_dir=None, postgres_dsn=PLATFORM))
    assert "configured: none" in _policy_error(node, {"connection": "orders"})


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("host=/var/run/postgresql dbname=x", "Unix socket"),
        ("host=a,b dbname=x", "several hosts"),
        ("dbname=x user=y", "none"),
        ("service=prod", "service"),
        ("host=db hostaddr=127.0.0.1", "hostaddr"),
    ],
)
def test_only_one_tcp_host_is_a_target(dsn: str, fragment: str) -> None:
    with pytest.raises(NodeError, match=fragment) as info:
        target_of(dsn, "params.dsn")
    assert info.value.error_class == "DatabasePolicy"


def test_targets_compare_host_port_database_user() -> None:
    assert target_of("postgresql://u:p@DB:5432/d", "x") == DatabaseTarget("db", 5432, "d", "u")
    assert target_of("host=db user=u", "x") == DatabaseTarget("db", 5432, "u", "u")


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::ffff:127.0.0.1"],
)
def test_a_loopback_platform_covers_every_local_address(address: str) -> None:
    platform = PlatformDatabase.from_dsn(f"{PLATFORM}?passfile=/x")
    assert platform.covers(ipaddress.ip_address(address), 15432)
    assert not platform.covers(ipaddress.ip_address(address), 15433)
    assert not platform.covers(ipaddress.ip_address("192.0.2.10"), 15432)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://reflux@127.0.0.1:15432/reflux",
        "postgresql://someone:pw@localhost:15432/postgres",
        "host=127.0.0.2 port=15432 dbname=template1 user=postgres",
        "postgresql://x@[::1]:15432/y",
    ],
)
def test_the_platform_database_is_refused_in_any_spelling(dsn: str) -> None:
    platform = PlatformDatabase.from_dsn(PLATFORM)
    with pytest.raises(NodeError) as info:
        asyncio.run(platform.checked_address(target_of(dsn, "params.dsn")))
    assert info.value.error_class == "DatabasePolicy"
    assert "platform-database" in str(info.value) and "127.0.0.1:15432" in str(info.value)
    assert "pw" not in str(info.value).split("rule")[0].split("PostgreSQL")[1]


def test_the_platform_is_refused_even_when_an_operator_configured_it(tmp_path: Path) -> None:
    node = _node(tmp_path)
    dsn = _dsn(node, {"connection": "platform"})  # configured and granted...
    platform = PlatformDatabase.from_dsn(PLATFORM)
    with pytest.raises(NodeError, match="platform-database"):  # ...and still refused
        asyncio.run(platform.checked_address(target_of(dsn, "connection 'platform'")))


def test_another_database_resolves_to_the_address_it_connects_to() -> None:
    platform = PlatformDatabase.from_dsn(PLATFORM)
    target = target_of("postgresql://u@192.0.2.7:15432/d", "x")
    assert asyncio.run(platform.checked_address(target)) == "192.0.2.7"
    other_port = target_of("postgresql://u@127.0.0.1:25432/d", "x")
    assert asyncio.run(platform.checked_address(other_port)) == "127.0.0.1"


def test_a_step_naming_a_connection_cannot_be_cached() -> None:
    from workflows.model import WorkflowDefinition
    from workflows.validation import check_definition

    def errors(params: dict[str, Any]) -> list[str]:
        definition = WorkflowDefinition.model_validate(
            {
                "id": "wf",
                "steps": [
                    {
                        "id": "q",
                        "node": "database.query@^1",
                        "cache": {"enabled": True},
                        "params": {"sql": "SELECT 1", **params},
                    }
                ],
            }
        )
        return [f"{e.path}: {e.message}" for e in check_definition(definition)]

    found = errors({"connection": "orders"})
    assert any(e.startswith("steps[0].cache.enabled: a database.query step naming") for e in found)
    assert not errors({"dsn": "postgresql://u@db/x"})
