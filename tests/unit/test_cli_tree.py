"""Every read command of ``reflux`` takes ``--json`` (issue 14 item 5).

The tree is walked from the parser itself, so a command added anywhere (api/cli.py,
processors/*/cli.py, reflux/*_cli.py, ...) is seen here without editing this test: it must be
declared in :data:`reflux.output.READ_COMMANDS` or :data:`reflux.output.OTHER_COMMANDS`, and a
read command without ``--json`` fails.
"""

from __future__ import annotations

import argparse

import pytest

from reflux.cli import build_parser
from reflux.command_tree import Command, walk
from reflux.output import OTHER_COMMANDS, READ_COMMANDS, add_json_flag


def _runnable(parser: argparse.ArgumentParser) -> dict[str, Command]:
    return {c.name: c for c in walk(parser) if c.runnable}


@pytest.fixture(scope="module")
def commands() -> dict[str, Command]:
    return _runnable(build_parser())


def test_every_command_is_declared_read_or_other(commands: dict[str, Command]) -> None:
    undeclared = sorted(set(commands) - READ_COMMANDS - OTHER_COMMANDS)
    assert not undeclared, (
        f"declare {undeclared} in reflux/output.py: READ_COMMANDS (then it needs --json) or "
        "OTHER_COMMANDS"
    )
    assert not READ_COMMANDS & OTHER_COMMANDS
    stale = sorted((READ_COMMANDS | OTHER_COMMANDS) - set(commands))
    assert not stale, f"reflux/output.py declares commands that do not exist: {stale}"


def test_every_read_command_takes_json(commands: dict[str, Command]) -> None:
    missing = sorted(name for name in READ_COMMANDS if "--json" not in commands[name].options)
    assert not missing, f"read commands without --json: {missing}"


def test_the_inventory_sees_delegated_and_nested_commands(commands: dict[str, Command]) -> None:
    # `reflux replay RUN` has a parser of its own beside `reflux replay ab`'s.
    assert "--until" in commands["replay"].options and "--json" in commands["replay"].options
    assert "--candidate-version" in commands["replay ab"].options
    assert {"runs list", "metrics nodes", "topics list", "api-keys list"} <= set(commands)
    assert len(commands) >= 70


def test_a_new_read_command_without_json_is_caught() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.add_parser("frobs")  # a new command nobody declared
    assert "frobs" in set(_runnable(parser)) - READ_COMMANDS - OTHER_COMMANDS
    with_json = argparse.ArgumentParser()
    add_json_flag(with_json)
    without = argparse.ArgumentParser()
    assert "--json" in _runnable(with_json)[""].options
    assert "--json" not in _runnable(without)[""].options


def test_read_commands_log_at_warning() -> None:
    # Their stdout is the answer; httpx's INFO line per request would land between it.
    from reflux.cli import QUIET_COMMANDS

    assert {name.split()[0] for name in READ_COMMANDS} <= QUIET_COMMANDS
