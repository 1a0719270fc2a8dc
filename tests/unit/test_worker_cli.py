"""`reflux worker` argument handling (no broker needed)."""

from __future__ import annotations

import argparse
import json

import pytest

from foundation.errors import ConfigurationError
from foundation.settings import Settings
from node_workers.cli import add_worker_commands, handle_worker, select_nodes, worker_config
from node_workers.concurrency import default_cpu_concurrency
from node_workers.nodes import builtin_nodes
from node_workers.registry import UnknownNodeError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_worker_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["worker", *argv])


def test_select_nodes_prefers_the_flag_then_the_environment() -> None:
    env = {"NODES_FILTER": "transform,condition"}
    assert select_nodes("http", env).names() == ["http.request@1.0.0"]
    assert select_nodes(None, env).names() == ["condition@1.0.0", "transform@1.0.0"]
    assert len(select_nodes(None, {})) == len(builtin_nodes())
    with pytest.raises(UnknownNodeError):
        select_nodes("nope", {})


def test_worker_arguments_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        "--nodes",
        "http,transform",
        "--io-concurrency",
        "300",
        "--cpu-concurrency",
        "3",
        "--node-concurrency",
        "transform=5",
        "--list",
    )
    assert (args.nodes, args.io_concurrency, args.cpu_concurrency, args.max_inline_output) == (
        "http,transform",
        300,
        3,
        256 * 1024,
    )
    assert args.handler(args, Settings()) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "http.request@1.0.0\tside_effects\tio pool of 300",
        "transform@1.0.0\tcacheable\ttransform pool of 5",
    ]
    assert handle_worker is args.handler
    args = _parse("--nodes", "http", "--io-concurrency", "300", "--list", "--json")
    assert args.handler(args, Settings()) == 0
    assert json.loads(capsys.readouterr().out) == {
        "data": [
            {"node": "http.request@1.0.0", "flags": ["side_effects"], "pool": "io", "size": 300}
        ]
    }


def test_worker_config_defaults_settings_then_flags() -> None:
    defaults = worker_config(_parse(), Settings())
    assert (defaults.io_concurrency, defaults.cpu_concurrency) == (256, default_cpu_concurrency())
    assert defaults.node_concurrency == {}
    settings = Settings(
        worker_io_concurrency=64,
        worker_cpu_concurrency=4,
        worker_node_concurrency="http.request=128, database.query@1=16",
    )
    from_settings = worker_config(_parse(), settings)
    assert (from_settings.io_concurrency, from_settings.cpu_concurrency) == (64, 4)
    assert from_settings.node_concurrency == {"http.request": 128, "database.query@1": 16}
    flags = worker_config(
        _parse(
            "--io-concurrency",
            "512",
            "--node-concurrency",
            "http.request=200,code.run=1",
            "--node-concurrency",
            "email.send@1=3",
        ),
        settings,
    )
    assert (flags.io_concurrency, flags.cpu_concurrency) == (512, 4)
    # The flag's entries are added to the setting's; the same key takes the flag's value.
    assert flags.node_concurrency == {
        "http.request": 200,
        "database.query@1": 16,
        "code.run": 1,
        "email.send@1": 3,
    }


@pytest.mark.parametrize("flag", ["--io-concurrency", "--cpu-concurrency"])
@pytest.mark.parametrize("value", ["0", "-3", "lots", "2.5"])
def test_concurrency_flags_refuse_what_is_not_a_positive_integer(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parse(flag, value)
    err = capsys.readouterr().err
    assert f"argument {flag}: expected an integer >= 1, but got {value!r}" in err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("http.request", r"Expected --node-concurrency as NODE\[@MAJOR\]=LIMIT"),
        ("http.request=0", r"Expected the limit of 'http.request' in --node-concurrency to be"),
        ("http.request=many", r"Expected --node-concurrency as NODE\[@MAJOR\]=LIMIT.*many"),
        ("HTTP=5", r"Expected --node-concurrency entries to name a node as NAME or NAME@MAJOR"),
        ("http.request@v1=5", r"NAME or NAME@MAJOR .*'http.request@v1'"),
        ("http.request=5,http.request=6", r"Expected 'http.request' once in --node-concurrency"),
        ("http.reqest=5", r"but \['http.reqest'\] name none"),
        ("http=5", r"but \['http'\] name none"),  # exact names, not the --nodes prefixes
    ],
)
def test_node_concurrency_errors_name_the_flag(entry: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        worker_config(_parse("--node-concurrency", entry), Settings())


def test_settings_errors_name_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"REFLUX_WORKER_NODE_CONCURRENCY as NODE"):
        worker_config(_parse(), Settings(worker_node_concurrency="http.request:5"))
    with pytest.raises(ConfigurationError, match=r"Expected REFLUX_WORKER_IO_CONCURRENCY to be"):
        worker_config(_parse(), Settings(worker_io_concurrency=0))
    with pytest.raises(ConfigurationError, match=r"Expected REFLUX_WORKER_CPU_CONCURRENCY to be"):
        worker_config(_parse(), Settings(worker_cpu_concurrency=-1))
