"""``reflux optimizer --config``: the OptimizerConfig file, with errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.errors import RefluxError
from processors.optimizer.bandit import RewardWeights
from processors.optimizer.cli import load_config
from processors.optimizer.strategies import OptimizerConfig
from reflux.cli import build_parser


def test_defaults_without_a_file() -> None:
    assert load_config(None) == OptimizerConfig()


def test_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.yaml"
    path.write_text(
        "timeout_margin: 2\nexploration_budget: 0.05\n"
        "weights: {'*': {cost: 0.5}, wf: {quality: 2}}\n"
        "fallbacks: {'wf/call': {node: http.request, params: {url: 'http://backup'}}}\n"
        "models: {'wf/ask': [big, small]}\ncontexts: {wf: difficulty}\n"
    )
    config = load_config(str(path))
    assert config.timeout_margin == 2 and config.exploration_budget == 0.05
    assert config.weights_for("wf") == RewardWeights(quality=2.0)
    assert config.weights_for("other") == RewardWeights(cost=0.5)
    assert config.fallbacks["wf/call"]["node"] == "http.request"
    assert config.models_for("wf", "ask") == ("big", "small")
    assert config.models_for("wf", "other") == ()
    assert config.contexts == {"wf": "difficulty"} and config.experiment_min_runs == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("speed: 1\n", r"unknown field\(s\) \['speed'\]"),
        ("weights: {wf: {speed: 1}}\n", "unknown reward weight"),
        ("- 1\n", "expected a mapping"),
        ("models: {'wf/ask': big}\n", r"models\['wf/ask'\]: expected a list of distinct model"),
        ("models: {'wf/ask': [big, big]}\n", r"models\['wf/ask'\]"),
        ("contexts: {wf: 3}\n", r"contexts\['wf'\]: expected an input field name"),
        ("experiment_min_runs: 0\n", "experiment_min_runs: expected >= 1"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RefluxError, match=message):
        load_config(str(path))


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["optimizer", "--schema", "s1", "--no-historian"])
    assert (args.schema, args.no_historian) == ("s1", True)
