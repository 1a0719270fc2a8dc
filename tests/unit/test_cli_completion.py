"""``reflux completion bash|zsh|fish`` driven through the real shells (issue 14 item 5).

bash: the function is called with ``COMP_WORDS``/``COMP_CWORD`` as bash's completion sets them.
zsh: ``_reflux`` with ``words``/``CURRENT`` set and ``compadd`` recording what it is offered
(its matching against the typed prefix is zsh's, emulated by the recorder). fish:
``complete -C`` completes a command line the way fish does at TAB.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from reflux.cli import build_parser
from reflux.completion import completion_script

# (words typed, the word being completed is the last) -> words that must be offered / not.
CASES: list[tuple[list[str], set[str], set[str]]] = [
    (["reflux", "ru"], {"run", "runs"}, {"replay", "dev"}),
    (["reflux", "runs", ""], {"list", "show", "graph", "mutate", "diff"}, {"run", "create"}),
    (["reflux", "runs", "show", "--j"], {"--json"}, {"--api"}),
    (["reflux", "-v", "runs", "list", "--status", "failed", "--"], {"--json", "--workflow"}, set()),
    (["reflux", "api-keys", "create", "--role", ""], {"admin", "viewer"}, {"--name"}),
    (["reflux", "replay", "--"], {"--until", "--step", "--json"}, set()),
    (["reflux", "replay", "ab", "--cand"], {"--candidate-version"}, set()),
    (["reflux", "completion", ""], {"bash", "zsh", "fish"}, set()),
    (["reflux", "metrics", "no"], {"nodes"}, {"workflows"}),
]


def _script(shell: str, tmp_path: Path, parser: argparse.ArgumentParser | None = None) -> Path:
    path = tmp_path / f"reflux.{shell}"
    path.write_text(completion_script(shell, parser or build_parser()))
    return path


def _need(shell: str) -> str:
    found = shutil.which(shell)
    if found is None:
        # `make up` installs the shells (infra/stack.py SYSTEM_TOOLS): missing is a failure.
        pytest.fail(f"{shell} is not installed: run `make up` (or apt-get install -y {shell})")
    return found


def bash_complete(script: Path, words: list[str]) -> set[str]:
    program = (
        f"source {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        '_reflux\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(
        [_need("bash"), "--norc", "-c", program], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def zsh_complete(script: Path, words: list[str]) -> set[str]:
    program = (
        "compdef() { :; }\n"  # compinit's; the script registers itself with it
        f"source {shlex.quote(str(script))}\n"
        # compadd offers words; zsh keeps those that match what is typed: so does this stand-in.
        "compadd() { [[ $1 == -- ]] && shift; print -l -- ${(M)@:#${PREFIX}*}; }\n"
        "_files() { :; }\n"
        f"words=({' '.join(shlex.quote(w) for w in words)})\n"
        f"CURRENT={len(words)}\n"
        f"PREFIX={shlex.quote(words[-1])}\n"
        "_reflux\n"
    )
    out = subprocess.run(
        [_need("zsh"), "-f", "-c", program], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def fish_complete(script: Path, words: list[str]) -> set[str]:
    line = " ".join(words)
    program = f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}"
    out = subprocess.run(
        [_need("fish"), "--no-config", "-c", program], capture_output=True, text=True, check=True
    )
    return {row.split("\t")[0] for row in out.stdout.splitlines()}


COMPLETERS = {"bash": bash_complete, "zsh": zsh_complete, "fish": fish_complete}


@pytest.mark.parametrize("shell", sorted(COMPLETERS))
def test_completing_commands_options_and_choices(shell: str, tmp_path: Path) -> None:
    script = _script(shell, tmp_path)
    complete = COMPLETERS[shell]
    for words, offered, not_offered in CASES:
        got = complete(script, words)
        assert offered <= got, f"{shell}: {words} -> {sorted(got)}"
        assert not (not_offered & got), f"{shell}: {words} -> {sorted(got)}"


@pytest.mark.parametrize("shell", sorted(COMPLETERS))
def test_a_new_command_completes_without_edits(shell: str, tmp_path: Path) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    frob = sub.add_parser("frobnicate")
    frob.add_argument("--level", choices=["low", "high"])
    script = _script(shell, tmp_path, parser)
    complete = COMPLETERS[shell]
    assert "frobnicate" in complete(script, ["reflux", "frob"])
    assert {"low", "high"} <= complete(script, ["reflux", "frobnicate", "--level", ""])


def test_the_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    from reflux.cli import main

    assert main(["completion", "bash"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# reflux completion for bash") and "complete -o default" in out


def test_zsh_completes_through_compsys_at_a_real_tab(tmp_path: Path) -> None:
    """An interactive zsh on a pseudo-terminal (zpty), compinit loaded, the script sourced: TAB
    completes `reflux runs sh` and then `--j` (each read waits for the completed text)."""
    zsh = _need("zsh")
    script = _script("zsh", tmp_path)
    driver = tmp_path / "drive.zsh"
    driver.write_text(
        "zmodload zsh/zpty\n"
        "zpty -b z 'zsh -f -i'\n"
        # PS1 spelt so that the echoed command line does not match the prompt's pattern.
        f'zpty -w z \'autoload -U compinit && compinit -u; source {script}; PS1="RE""ADY> "\'\n'
        "zpty -r z out '*READY> *'\n"
        "zpty -n -w z $'reflux runs sh\\t'\n"
        "zpty -r z out '*runs show*' && print -r -- FIRST-OK\n"
        "zpty -n -w z $'--j\\t'\n"
        "zpty -r z out '*--json*' && print -r -- SECOND-OK\n"
        "zpty -d z\n"
    )
    out = subprocess.run(
        [zsh, "-f", str(driver)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "FIRST-OK" in out.stdout and "SECOND-OK" in out.stdout, out.stdout + out.stderr
