"""The LLM forge's pure parts: the prompt, the answer's parsing (field paths), the operator's
limits and egress, and the feedback loop with a scripted model (the real ``openai`` client on a
scripted transport) and a scripted sandbox. The real sandbox, catalog and worker:
tests/integration/test_forge_llm.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest

from foundation.settings import Settings
from node_workers.artifacts.bundle import ArtifactError, NodeArtifact, artifact_digest
from node_workers.artifacts.tests_runner import ArtifactTestReport, TestOutcome
from node_workers.egress.policy import parse_allow_entries, parse_allow_entry
from node_workers.forge.llm import (
    FORGE_SOURCE,
    ForgeLimits,
    ForgeLlmAuthError,
    RoundEvent,
    egress_covered,
    forge_from_description,
    policy_refusals,
)
from node_workers.forge.pipeline import ForgeRefused
from node_workers.forge.prompts import (
    ANSWER_SHAPE,
    build_prompt,
    contract_text,
    parse_answer,
)

NODE_OK = "def run(input, ctx):\n    return {'total': input['price'] * input['qty']}\n"
NODE_BUG = "def run(input, ctx):\n    return {'total': input['price'] + input['qty']}\n"
TESTS = (
    "import node\nfrom reflux_node.testing import fake_context\n\n"
    "def test_total():\n    assert node.run({'price': 3, 'qty': 4}, fake_context()) == "
    "{'total': 12}\n"
)


def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "acme.total",
        "version": "1.0.0",
        "description": "price times quantity",
        "input_schema": {
            "type": "object",
            "properties": {"price": {"type": "number"}, "qty": {"type": "integer"}},
            "required": ["price", "qty"],
        },
        "output_schema": {
            "type": "object",
            "properties": {"total": {"type": "number"}},
            "required": ["total"],
        },
    }
    return {**base, **changes}


def answer(node: str = NODE_OK, *, fenced: bool = True, **manifest_changes: Any) -> str:
    body = json.dumps(
        {
            "manifest": manifest(**manifest_changes),
            "files": {"node.py": node, "test_node.py": TESTS},
        }
    )
    return f"Here it is:\n```json\n{body}\n```\n" if fenced else body


# -- the prompt -----------------------------------------------------------------------------------


def test_the_system_prompt_states_the_contract_from_bundle_and_the_answer_shape() -> None:
    prompt = build_prompt("multiply price by quantity")
    for line in contract_text().splitlines():
        assert line.strip() in prompt.system
    for needle in ("run(input: dict, ctx", "ctx.http", "ctx.secret", "ctx.log", "NodeFailure"):
        assert needle in prompt.system
    assert "fake_context(responses=..., secrets=...)" in prompt.system
    assert ANSWER_SHAPE in prompt.system and "```json" in prompt.system
    assert prompt.user.endswith("multiply price by quantity")


def test_examples_go_in_the_user_message_and_change_the_prompt_digest() -> None:
    plain = build_prompt("multiply")
    example = {"input": {"price": 3, "qty": 4}, "output": {"total": 12}}
    with_example = build_prompt("multiply", [example])
    assert '1. {"input": {"price": 3, "qty": 4}, "output": {"total": 12}}' in with_example.user
    assert plain.sha256 != with_example.sha256
    assert plain.sha256 == build_prompt("multiply").sha256
    assert plain.sha256.startswith("sha256:") and len(plain.sha256) == 71
    assert [m["role"] for m in plain.messages()] == ["system", "user"]


# -- the answer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fenced", [True, False])
def test_an_answer_parses_fenced_or_bare(fenced: bool) -> None:
    artifact = parse_answer(answer(fenced=fenced), provenance={"source": "x"})
    assert artifact.manifest.name == "acme.total"
    assert (artifact.entry, artifact.tests) == ("node.py", "test_node.py")
    assert artifact.files["node.py"] == NODE_OK
    assert artifact.provenance == {"source": "x"}


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("", "answer:"),
        ("I cannot do that.", "answer:"),
        ("[1, 2]", "answer:"),
        ('{"manifest": {}, "files": {}, "notes": "x"}', "answer.notes:"),
        ('{"manifest": [], "files": {}}', "manifest:"),
        (json.dumps({"manifest": manifest(), "files": {"test_node.py": TESTS}}), "files.node.py:"),
        (
            json.dumps({"manifest": manifest(), "files": {"node.py": NODE_OK}}),
            "files.test_node.py:",
        ),
        (
            json.dumps(
                {"manifest": manifest(), "files": {"node.py": NODE_OK, "test_node.py": "x = 1\n"}}
            ),
            "files.test_node.py: Expected at least one",
        ),
        (answer(name="Total"), "manifest.name:"),
        (answer(version="one"), "manifest.version:"),
        (
            answer(egress=["ok.example", "not a host"]),
            "manifest.egress:",
        ),  # the contract names the list, the entry in the message
        (answer(input_schema={"type": "nope"}), "manifest.input_schema:"),
        (answer(limits={"cpu": 9}), "manifest.limits.cpu:"),
        (answer(colour="red"), "manifest.colour:"),
    ],
)
def test_a_bad_answer_names_the_field_path(text: str, path: str) -> None:
    with pytest.raises(ArtifactError) as info:
        parse_answer(text)
    assert str(info.value).startswith(path), str(info.value)


# -- limits and egress ----------------------------------------------------------------------------


def limits(*allowed: str) -> ForgeLimits:
    return ForgeLimits(
        max_cpu=1.0,
        max_memory_mb=512,
        max_timeout_s=30,
        egress_allowed=parse_allow_entries(allowed),
    )


@pytest.mark.parametrize(
    ("declared", "allowed", "covered"),
    [
        ("api.acme.example", "api.acme.example", True),
        ("api.acme.example:443", "api.acme.example", True),
        ("api.acme.example", "api.acme.example:443", False),  # any port is wider than 443
        ("api.acme.example:80", "api.acme.example:443", False),
        ("eu.api.acme.example", "*.acme.example", True),
        ("*.api.acme.example", "*.acme.example", True),
        ("*.acme.example", "api.acme.example", False),
        ("acme.example", "*.acme.example", False),
        ("evil-acme.example", "*.acme.example", False),
        ("10.1.2.0/24", "10.0.0.0/8", True),
        ("10.0.0.0/8", "10.1.2.0/24", False),
        ("api.acme.example", "10.0.0.0/8", False),
        ("10.1.2.3", "api.acme.example", False),
    ],
)
def test_egress_coverage(declared: str, allowed: str, covered: bool) -> None:
    assert egress_covered(parse_allow_entry(declared), parse_allow_entry(allowed)) is covered


def test_policy_refusals_name_each_field_over_the_operator_maximum() -> None:
    artifact = parse_answer(
        answer(
            limits={"cpu": 2, "memory_mb": 1024, "timeout_s": 60},
            egress=["api.acme.example", "evil.example"],
        )
    )
    refusals = policy_refusals(artifact.manifest, limits("*.acme.example"))
    assert [r.split(":", 1)[0] for r in refusals] == [
        "manifest.limits.cpu",
        "manifest.limits.memory_mb",
        "manifest.limits.timeout_s",
        "manifest.egress[1]",
    ]
    assert "REFLUX_SANDBOX_MAX_CPU" in refusals[0] and "but got 2" in refusals[0]
    assert "'evil.example'" in refusals[3] and "*.acme.example" in refusals[3]
    assert policy_refusals(parse_answer(answer()).manifest, limits()) == []


def test_forge_limits_from_settings_take_the_tenants_list_only_inside_the_grantable_set() -> None:
    settings = Settings(
        sandbox_max_cpu=1.5,
        sandbox_max_mem_mb=1024,
        sandbox_max_timeout_sec=60,
        egress_allow=("api.ops.example",),
        egress_grantable=("*.partner.example",),
        egress_tenant_allow={"acme": ("api.partner.example", "api.other.example")},
    )
    forge = ForgeLimits.from_settings(settings, tenant="acme")
    assert (forge.max_cpu, forge.max_memory_mb, forge.max_timeout_s) == (1.5, 1024, 60)
    assert [e.text for e in forge.egress_allowed] == ["api.ops.example", "api.partner.example"]
    other = ForgeLimits.from_settings(settings, tenant="default")
    assert [e.text for e in other.egress_allowed] == ["api.ops.example"]


# -- the loop -------------------------------------------------------------------------------------


def report(
    passed: bool, tests: list[TestOutcome], *, policy: str | None = None
) -> ArtifactTestReport:
    return ArtifactTestReport(passed=passed, tests=tests, sandbox_s=0.25, policy=policy)


def sandbox(artifact: NodeArtifact) -> ArtifactTestReport:
    """Stands in for the real sandbox (integration tests run that): the multiplication is
    right or it is not."""
    if "*" in artifact.files["node.py"]:
        return report(True, [TestOutcome("test_total", True, "")])
    return report(False, [TestOutcome("test_total", False, "AssertionError: {'total': 7} != 12")])


@dataclass
class ScriptedModel:
    """An OpenAI-compatible endpoint answering ``answers`` in order (on the real client)."""

    answers: list[str]
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if self.status != 200:
            return httpx2.Response(self.status, json={"error": {"message": "no", "type": "x"}})
        text = self.answers.pop(0)
        return httpx2.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"] + "-served",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
        )

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://llm.test:8000/v1",
            api_key="sk-test",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=httpx2.MockTransport(self.handler)),
        )


def forge(
    model: ScriptedModel,
    *,
    tester: Callable[[NodeArtifact], ArtifactTestReport] = sandbox,
    allowed: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    return forge_from_description(
        "multiply price by quantity",
        client=model.client(),
        model="m1",
        tester=tester,
        limits=limits(*allowed),
        **kwargs,
    )


def test_failing_tests_go_back_to_the_model_and_the_second_answer_wins() -> None:
    model = ScriptedModel([answer(NODE_BUG), answer(NODE_OK)])
    events: list[RoundEvent] = []
    outcome = forge(model, on_round=events.append, examples=[{"input": {"price": 1, "qty": 2}}])
    assert outcome.rounds == 2 and outcome.report.passed
    assert [e.outcome for e in events] == ["tests_failed", "passed"]
    # The second request is the whole conversation: the first answer, then its failures.
    second = model.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert "test_total: AssertionError: {'total': 7} != 12" in second[3]["content"]
    provenance = outcome.artifact.provenance
    assert provenance["source"] == FORGE_SOURCE
    assert provenance["description"] == "multiply price by quantity"
    assert provenance["examples"] == [{"input": {"price": 1, "qty": 2}}]
    assert (provenance["model"], provenance["endpoint_host"]) == ("m1", "llm.test:8000")
    assert (
        provenance["prompt_sha256"]
        == build_prompt("multiply price by quantity", [{"input": {"price": 1, "qty": 2}}]).sha256
    )
    assert provenance["prompt"]["system"] == second[0]["content"]
    rounds = provenance["rounds"]
    assert [r["outcome"] for r in rounds] == ["tests_failed", "passed"]
    assert rounds[0]["tests"] == [
        {"name": "test_total", "passed": False, "message": "AssertionError: {'total': 7} != 12"}
    ]
    assert rounds[1]["model"] == "m1-served" and rounds[1]["completion_tokens"] == 5
    assert rounds[0]["answer_sha256"] != rounds[1]["answer_sha256"]
    assert set(provenance["files_sha256"]) == {"node.py", "test_node.py"}
    assert set(provenance["timings"]) == {"generate_s", "sandbox_s", "total_s"}
    assert outcome.sandbox_s == pytest.approx(0.5)
    assert artifact_digest(outcome.artifact).startswith("sha256:")


def test_an_unparseable_answer_is_fed_back_with_its_field_path() -> None:
    model = ScriptedModel([answer(name="Not A Name"), "sorry", answer()])
    outcome = forge(model)
    assert outcome.rounds == 3
    feedback = [r["messages"][-1]["content"] for r in model.requests[1:]]
    assert feedback[0].startswith("Your answer could not be used: manifest.name:")
    assert feedback[1].startswith("Your answer could not be used: answer: Expected one JSON")
    assert [r["outcome"] for r in outcome.artifact.provenance["rounds"]] == [
        "rejected",
        "rejected",
        "passed",
    ]


def test_code_that_still_fails_after_the_bounded_rounds_is_refused_with_the_last_report() -> None:
    model = ScriptedModel([answer(NODE_BUG)] * 2)
    with pytest.raises(ForgeRefused) as info:
        forge(model, max_rounds=2)
    assert str(info.value).startswith("Refused after 2 round(s), the last one: test_total:")
    assert info.value.report is not None and not info.value.report.passed
    assert len(model.requests) == 2


def test_undeclared_or_unallowed_egress_is_refused_without_running_the_tests() -> None:
    ran: list[NodeArtifact] = []

    def tester(artifact: NodeArtifact) -> ArtifactTestReport:
        ran.append(artifact)
        return sandbox(artifact)

    model = ScriptedModel([answer(egress=["evil.example"])] * 2)
    with pytest.raises(ForgeRefused) as info:
        forge(model, tester=tester, max_rounds=2, allowed=("api.acme.example",))
    assert "manifest.egress[0]: Expected a host the operator allows" in str(info.value)
    assert "'evil.example'" in str(info.value)
    assert ran == []  # refused before the sandbox
    assert "manifest.egress[0]" in model.requests[1]["messages"][-1]["content"]


def test_limits_over_the_worker_maxima_are_refused() -> None:
    model = ScriptedModel([answer(limits={"memory_mb": 2048})])
    with pytest.raises(ForgeRefused, match=r"manifest\.limits\.memory_mb: Expected at most 512"):
        forge(model, max_rounds=1)


def test_tests_that_never_ran_are_reported_by_the_sandbox_policy() -> None:
    model = ScriptedModel([answer(), answer(), answer()])
    reports = iter(
        [
            report(False, [], policy="timed out after 10 s"),
            report(True, []),  # no test ran: not a pass
            report(True, [TestOutcome("test_total", True, "")]),
        ]
    )
    outcome = forge(model, tester=lambda _: next(reports))
    assert outcome.rounds == 3
    assert "- sandbox: timed out after 10 s" in model.requests[1]["messages"][-1]["content"]
    assert "- sandbox: no test_* function ran" in model.requests[2]["messages"][-1]["content"]


def test_name_and_version_replace_the_models_choice() -> None:
    outcome = forge(ScriptedModel([answer()]), name="ops.multiply", version="2.1.0")
    assert (outcome.artifact.manifest.name, outcome.artifact.manifest.version) == (
        "ops.multiply",
        "2.1.0",
    )
    assert forge(ScriptedModel([answer()])).artifact.manifest.name == "acme.total"
    # The caller's name wins before the checks: a model's invalid one costs no round.
    assert forge(ScriptedModel([answer(name="Not Valid")]), name="ops.m", max_rounds=1).rounds == 1


def test_an_empty_description_is_refused_before_asking() -> None:
    model = ScriptedModel([])
    with pytest.raises(ForgeRefused, match="description"):
        forge_from_description(
            "  ", client=model.client(), model="m", tester=sandbox, limits=limits()
        )
    assert model.requests == []


def test_a_rejected_key_is_a_clear_non_retryable_error() -> None:
    with pytest.raises(ForgeLlmAuthError, match="LlmAuth: HTTP 401"):
        forge(ScriptedModel([], status=401))


# -- the CLI's parts ------------------------------------------------------------------------------


def test_examples_file_is_a_json_list_or_an_object_with_examples(tmp_path: Any) -> None:
    from foundation.errors import ConfigurationError
    from reflux.cli import build_parser
    from reflux.forge_new_cli import load_examples

    listed = tmp_path / "list.json"
    listed.write_text('[{"input": {"price": 1, "qty": 2}, "output": {"total": 2}}]')
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"examples": [{"input": {}}]}')
    assert load_examples(listed) == [{"input": {"price": 1, "qty": 2}, "output": {"total": 2}}]
    assert load_examples(wrapped) == [{"input": {}}]
    for text in ("not json", '{"input": {}}', "[1, 2]"):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ConfigurationError, match="--examples"):
            load_examples(bad)

    args = build_parser().parse_args(
        ["forge", "new", "a node", "--rounds", "2", "--name", "ops.m", "--version", "1.2.0"]
    )
    assert (args.description, args.rounds, args.name, args.version) == (
        "a node",
        2,
        "ops.m",
        "1.2.0",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["forge", "new", "a node", "--rounds", "11"])
