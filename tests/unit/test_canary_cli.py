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


def test_mutations_show_prints_the_canary_decision() -> None:
    from processors.canary.judge import first_decision
    from reflux.mutations_cli import describe_mutation
    from tests.unit.test_canary_judge import simulate

    _, verdict = first_decision(simulate(1, fail_canary=0.6))
    assert verdict.decision == "rollback"
    text = describe_mutation(
        {
            "mutation_id": "m1",
            "workflow_id": "wf",
            "base_version": 1,
            "applied_version": 2,
            "status": "rolled_back",
            "author": "optimizer:timeout",
            "rationale": "r",
            "report": {
                "checks": [],
                "canary": {
                    "decision": "rollback",
                    "canary_runs": verdict.canary_runs,
                    "baseline_runs": verdict.baseline_runs,
                    "statistics": verdict.to_json(),
                },
            },
            "history": [],
            "effect": [],
        }
    )
    assert f"canary: rollback after {verdict.canary_runs} canary" in text
    assert "success      REGRESSED regression +0." in text
    assert "latency_p95  n/a       fewer than 10 successful runs in an arm" in text
    assert "cost         ok        regression" in text
