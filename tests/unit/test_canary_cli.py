"""``reflux canary``: the command is registered and a bad configuration is refused, naming the
setting, before any service is touched."""

from __future__ import annotations

import pytest

from reflux.cli import build_parser, main


def test_the_canary_command_parses_its_options() -> None:
    args = build_parser().parse_args(
        ["canary", "--alpha", "0.02", "--min-runs", "20", "--max-runs", "500", "--no-cost"]
    )
    assert (args.alpha, args.min_runs, args.max_runs, args.no_cost) == (0.02, 20, 500, True)
    assert args.schema == "reflux" and args.interval == 0.2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["canary", "--min-runs", "1"], "Expected min_runs >= 2, but got 1"),
        (["canary", "--min-runs", "50", "--max-runs", "10"], "Expected max_runs >= min_runs"),
        (["canary", "--alpha", "2"], "Expected alpha in (0, 1), but got 2.0"),
    ],
)
def test_a_bad_configuration_is_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
