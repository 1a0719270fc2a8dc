"""``reflux completion bash|zsh|fish``: a shell completion script, generated from the parser.

The script carries the command tree (:mod:`reflux.command_tree`) as tables (sub-commands,
options, options that take a value, fixed choices) and a small function that walks the words
typed so far through them. It is written, not imported from argcomplete: completing then needs
no Python start-up per TAB (``reflux`` imports the whole engine, ~1 s), and a new command
completes as soon as the script is generated again (ADR 0063).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from reflux.command_tree import Command, walk

__all__ = ["SHELLS", "add_completion_command", "completion_script"]

PROG = "reflux"


def _key(command: Command) -> str:
    return " ".join((PROG, *command.path))


def _tables(parser: argparse.ArgumentParser) -> dict[str, dict[str, str]]:
    """name -> {key -> space-separated words}; choices are keyed ``PATH|OPTION`` (``PATH|``:
    the first positional)."""
    subs: dict[str, str] = {}
    opts: dict[str, str] = {}
    valopts: dict[str, str] = {}
    choices: dict[str, str] = {}
    for command in walk(parser):
        key = _key(command)
        subs[key] = " ".join(command.subcommands)
        opts[key] = " ".join(command.options)
        valopts[key] = " ".join(command.value_options)
        for option, words in command.choices.items():
            choices[f"{key}|{option}"] = " ".join(words)
    return {"subs": subs, "opts": opts, "valopts": valopts, "choices": choices}


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _assoc(name: str, table: dict[str, str], quote: Callable[[str], str]) -> str:
    rows = "\n".join(f"    [{quote(k)}]={quote(v)}" for k, v in sorted(table.items()))
    return f"{name}=(\n{rows}\n)"


_BASH_FUNCTION = r"""
_reflux() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local cmd=reflux word i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ " ${_reflux_valopts[$cmd]} " == *" $word "* ]] && skip=1
            continue
        fi
        [[ " ${_reflux_subs[$cmd]} " == *" $word "* ]] && cmd="$cmd $word"
    done
    COMPREPLY=()
    if ((COMP_CWORD > 1)) && [[ $prev == -* && " ${_reflux_valopts[$cmd]} " == *" $prev "* ]]; then
        # An option's value: its choices, else nothing here (-o default: file names).
        COMPREPLY=($(compgen -W "${_reflux_choices[$cmd|$prev]}" -- "$cur"))
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${_reflux_opts[$cmd]}" -- "$cur"))
        return 0
    fi
    COMPREPLY=($(compgen -W "${_reflux_subs[$cmd]} ${_reflux_choices[$cmd|]}" -- "$cur"))
}
complete -o default -F _reflux reflux
"""

_ZSH_FUNCTION = r"""
_reflux() {
    local cmd=reflux word i skip=0
    for ((i = 2; i < CURRENT; i++)); do
        word=${words[i]}
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ " ${_reflux_valopts[$cmd]} " == *" $word "* ]] && skip=1
            continue
        fi
        [[ " ${_reflux_subs[$cmd]} " == *" $word "* ]] && cmd="$cmd $word"
    done
    local cur=${words[CURRENT]} prev=${words[CURRENT-1]}
    if ((CURRENT > 2)) && [[ $prev == -* && " ${_reflux_valopts[$cmd]} " == *" $prev "* ]]; then
        local given=${_reflux_choices[$cmd|$prev]}
        if [[ -n $given ]]; then compadd -- ${=given}; else _files; fi
        return
    fi
    if [[ $cur == -* ]]; then
        compadd -- ${=_reflux_opts[$cmd]}
        return
    fi
    local -a found
    found=(${=_reflux_subs[$cmd]} ${=_reflux_choices[$cmd|]})
    if ((${#found})); then compadd -- $found; else _files; fi
}
compdef _reflux reflux
"""

_FISH_FUNCTION = r"""
function __reflux_lookup --argument-names key
    # key, then the table's rows
    for row in $argv[2..-1]
        set -l parts (string split -m 1 \t -- $row)
        if test "$parts[1]" = "$key"
            string split ' ' -- $parts[2] | string match -v ''
            return
        end
    end
end

function __reflux_complete
    set -l tokens (commandline -opc)
    set -l cur (commandline -ct)
    set -l cmd reflux
    set -l skip 0
    for word in $tokens[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        if string match -q -- '-*' $word
            contains -- $word (__reflux_lookup $cmd $__reflux_valopts); and set skip 1
            continue
        end
        contains -- $word (__reflux_lookup $cmd $__reflux_subs); and set cmd "$cmd $word"
    end
    set -l prev $tokens[-1]
    if test (count $tokens) -gt 1; and contains -- $prev (__reflux_lookup $cmd $__reflux_valopts)
        set -l given (__reflux_lookup "$cmd|$prev" $__reflux_choices)
        if test (count $given) -gt 0
            printf '%s\n' $given
        else
            __fish_complete_path $cur
        end
        return
    end
    if string match -q -- '-*' $cur
        __reflux_lookup $cmd $__reflux_opts
        return
    end
    set -l found (__reflux_lookup $cmd $__reflux_subs) (__reflux_lookup "$cmd|" $__reflux_choices)
    if test (count $found) -gt 0
        printf '%s\n' $found
    else
        __fish_complete_path $cur
    end
end

complete -c reflux -e
complete -c reflux -f -a '(__reflux_complete)'
"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_list(name: str, table: dict[str, str]) -> str:
    # fish has no associative arrays: a list of "KEY<tab>WORDS" rows, looked up by key.
    rows = " \\\n    ".join(
        f"{_fish_quote(k)}\\t{_fish_quote(v)}" for k, v in sorted(table.items())
    )
    return f"set -g {name} \\\n    {rows}"


def _header(shell: str) -> str:
    return (
        f"# {PROG} completion for {shell}: generated by `{PROG} completion {shell}` from the "
        "command tree;\n# generate it again after an upgrade (docs/cli.md).\n"
    )


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    tables = _tables(parser)
    if shell == "fish":
        lists = "\n".join(_fish_list(f"__reflux_{name}", t) for name, t in tables.items())
        return _header(shell) + lists + "\n" + _FISH_FUNCTION
    declare = "declare -gA" if shell == "bash" else "typeset -gA"
    assocs: Iterable[str] = (
        f"{declare} _reflux_{name}\n" + _assoc(f"_reflux_{name}", t, _sh_quote)
        for name, t in tables.items()
    )
    first = "#compdef reflux\n" if shell == "zsh" else ""
    function = _BASH_FUNCTION if shell == "bash" else _ZSH_FUNCTION
    return first + _header(shell) + "\n".join(assocs) + "\n" + function


SHELLS = ("bash", "zsh", "fish")


def add_completion_command(subparsers: Any, root: Callable[[], argparse.ArgumentParser]) -> None:
    """``root`` builds the whole parser again (this command's own parser is part of it)."""
    command = subparsers.add_parser(
        "completion",
        help="print a shell completion script (e.g. `source <(reflux completion bash)`)",
        description="bash: source <(reflux completion bash) (or write it to "
        "~/.local/share/bash-completion/completions/reflux); zsh, after compinit: "
        "source <(reflux completion zsh); fish: reflux completion fish > "
        "~/.config/fish/completions/reflux.fish",
    )
    command.add_argument("shell", choices=SHELLS)

    def handle(args: argparse.Namespace) -> int:
        print(completion_script(args.shell, root()), end="")
        return 0

    command.set_defaults(handler=handle)
