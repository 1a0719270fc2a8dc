"""``reflux dev --processes N`` (its argument) and the light supervisor entry point
``python -m reflux.supervision`` that :class:`reflux.processes.ProcessEngine` starts; the
processes themselves are tested in tests/integration/test_dev_processes.py."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reflux.cli import build_parser
from reflux.processes import children_of
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


def test_dev_runs_in_one_process_unless_asked_for_processes() -> None:
    parser = build_parser()
    assert parser.parse_args(["dev"]).processes == 0
    args = parser.parse_args(["dev", "--processes", "3", "--log-dir", "/tmp/x"])
    assert (args.processes, str(args.log_dir)) == (3, "/tmp/x")


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_dev_processes_must_be_a_positive_count(count: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dev", "--processes", count])


def test_the_supervisor_module_restarts_its_command_and_stops_it_on_sigterm(
    tmp_path: Path,
) -> None:
    """A command that exits at once is a death: logged with its status and started again; a
    SIGTERM ends the supervisor with status 0 and no child left. (A process test among the
    unit tests: no service, but ~5 s, the child's interpreter start.)"""
    out = tmp_path / "supervisor.log"
    command = ["--max-backoff", "0.2", "--", "completion", "bash"]
    with out.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "reflux.supervision", *command],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        eventually(
            lambda: out.read_text().count("completion died after"),
            60,
            "a death of the supervised command",
            describe=out.read_text,
        )
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0, out.read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
    text = out.read_text()
    assert "to run until stopped, but it ended: exit status 0" in text, text
    assert children_of(supervisor.pid) == []
