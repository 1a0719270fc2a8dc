"""`reflux worker` argument handling (no broker needed)."""

from __future__ import annotations

import argparse

import pytest

from node_workers.cli import add_worker_commands, handle_worker, select_nodes
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
    args = _parse("--nodes", "http,transform", "--concurrency", "3", "--list")
    assert (args.nodes, args.concurrency, args.max_inline_output) == (
        "http,transform",
        3,
        256 * 1024,
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["http.request@1.0.0\tside_effects", "transform@1.0.0\tcacheable"]
    assert handle_worker is args.handler
