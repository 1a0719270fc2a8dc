"""The ``reflux`` command tree as data: every command's path, options and sub-commands.

Read from the argparse parser itself, so shell completion (:mod:`reflux.completion`) and the
test that every read command takes ``--json`` see a new command without being edited. A command
that hands its arguments to a parser of its own (``reflux replay``) names that parser with
``set_defaults(delegated_parsers=...)``: a function returning ``{sub-command: parser}``, ``""``
for the command itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Command", "walk"]


@dataclass(frozen=True, slots=True)
class Command:
    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    subcommands: tuple[str, ...]
    options: tuple[str, ...]
    """Every option string (``-i``, ``--input``), ``-h``/``--help`` included."""
    value_options: tuple[str, ...]
    """The options that take a value (the word after them is not a sub-command)."""
    choices: dict[str, tuple[str, ...]]
    """Options (and ``""``: the first positional) whose values are a fixed list."""
    runnable: bool
    """Runs something itself (a leaf, or ``reflux replay RUN`` beside ``reflux replay ab``)."""

    @property
    def name(self) -> str:
        return " ".join(self.path)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse has no public accessor for its actions
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    delegated: Callable[[], dict[str, argparse.ArgumentParser]] | None = parser.get_default(
        "delegated_parsers"
    )
    if delegated is not None:
        found.update({name: p for name, p in delegated().items() if name})
    return found


def _own_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    delegated = parser.get_default("delegated_parsers")
    if delegated is not None and "" in delegated():
        own: argparse.ArgumentParser = delegated()[""]
        return own
    return parser


def _describe(path: tuple[str, ...], parser: argparse.ArgumentParser) -> Command:
    subs = _subparsers(parser)
    own = _own_parser(parser)
    options: list[str] = []
    value_options: list[str] = []
    choices: dict[str, tuple[str, ...]] = {}
    for action in own._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        options += action.option_strings
        takes_value = action.option_strings and action.nargs != 0
        if takes_value:
            value_options += action.option_strings
        if action.choices is not None and not isinstance(action.choices, dict):
            words = tuple(str(c) for c in action.choices)
            for option in action.option_strings or [""]:
                choices.setdefault(option, words)
    return Command(
        path=path,
        parser=own,
        subcommands=tuple(subs),
        options=tuple(options),
        value_options=tuple(value_options),
        choices=choices,
        runnable=not subs or own is not parser,
    )


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every command, depth first, the root (path ``()``) included."""
    yield _describe(path, parser)
    for name, sub in _subparsers(parser).items():
        yield from walk(sub, (*path, name))
